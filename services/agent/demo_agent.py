"""The demo agent: the reception of Dr. Smith's clinic (opening hours, booking, transfer to reception).

Used by `make demo` and the tests; with the control plane it is seeded into the database like any
tenant's agent.
"""

from __future__ import annotations

from google.protobuf.struct_pb2 import Struct

from voice.v1 import agents_pb2

DEMO_TENANT_ID = "t_demo"
DEMO_AGENT_ID = "a_dr_smith"


def demo_agent() -> agents_pb2.Agent:
    transfer_input = Struct()
    transfer_input.update(
        {
            "target": "ext:100",
            "type": "warm",
            "context": "Caller asked for reception from the AI receptionist.",
            "reason": "caller_request",
        }
    )
    return agents_pb2.Agent(
        id=DEMO_AGENT_ID,
        tenant_id=DEMO_TENANT_ID,
        name="Dr. Smith's clinic",
        description="Front desk of a family doctor's practice",
        system_prompt=(
            "You are the friendly receptionist of Dr. Smith's clinic. Answer briefly, one or two sentences. "
            "You can give opening hours, book appointments and transfer the caller to reception."
        ),
        greeting="Hello, thank you for calling Doctor Smith's clinic. How can I help you today?",
        language="en-US",
        faq=[
            agents_pb2.FaqEntry(
                question="What are your opening hours?",
                answer=(
                    "We are open Monday to Friday from 8 AM to 6 PM, and on Saturday from 9 AM to 1 PM. "
                    "We are closed on Sunday."
                ),
                keywords=[
                    "open",
                    "opening",
                    "hours",
                    "close",
                    "closed",
                    "saturday",
                    "sunday",
                    "time",
                    "when",
                ],
            ),
            agents_pb2.FaqEntry(
                question="Where is the clinic?",
                answer=(
                    "We are at 12 Harbour Street, next to the pharmacy, with parking behind the building."
                ),
                keywords=["where", "address", "located", "location", "parking", "street", "find"],
            ),
            agents_pb2.FaqEntry(
                question="How much does a consultation cost?",
                answer="A standard consultation is $65, and follow-up visits within two weeks are $40.",
                keywords=["cost", "price", "much", "pay", "fee", "consultation", "insurance"],
            ),
        ],
        intents=[
            agents_pb2.Intent(
                name="book_appointment",
                phrases=[
                    "I would like to book an appointment",
                    "can I make an appointment with Doctor Smith",
                    "I need to see the doctor",
                    "book an appointment for tomorrow",
                ],
                response=(
                    "I can book that for you. Doctor Smith has an opening tomorrow at 10:30 AM. "
                    "I've pencilled you in, and we'll text you a confirmation."
                ),
            ),
            agents_pb2.Intent(
                name="talk_to_reception",
                phrases=[
                    "can I speak to someone at reception",
                    "transfer me to reception please",
                    "I want to talk to a person",
                    "can I talk to a human",
                ],
                response="Of course. I'm transferring you to our reception now, please hold.",
                tool_name="transfer_call",
                tool_input=transfer_input,
            ),
            agents_pb2.Intent(
                name="goodbye",
                phrases=["that's all thanks", "goodbye", "bye", "no that's all", "thank you bye"],
                response="Thank you for calling Doctor Smith's clinic. Goodbye!",
                tool_name="end_call",
            ),
        ],
        transfer_targets=[
            agents_pb2.TransferTarget(name="reception", target="ext:100", description="Front desk staff"),
        ],
        tools=[
            agents_pb2.ToolDefinition(name="transfer_call", kind=agents_pb2.TOOL_KIND_TRANSFER_CALL),
            agents_pb2.ToolDefinition(name="end_call", kind=agents_pb2.TOOL_KIND_END_CALL),
        ],
        stt=agents_pb2.SttSettings(keywords=["doctor", "smith", "clinic", "appointment", "reception"]),
    )
