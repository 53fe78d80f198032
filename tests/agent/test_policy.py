"""The offline policy on sentences of our own (not the demo agent's phrases): it never takes a wrong
action. Each case is the right action, a confirmation question, a clarifying question or a plain answer."""

from __future__ import annotations

import pytest

from services.agent.demo_agent import demo_agent
from services.agent.ports import ChatMessage, Completed, LlmRequest, TextDelta, ToolCallRequested
from services.agent.providers.llm.policy import (
    CHANGE_WITH_TRANSFER,
    CLARIFY,
    CONFIRM_END,
    GO_ON,
    PolicyModel,
    PolicyReply,
    confirmation_prompt,
)
from services.agent.providers.llm.understanding import call_ending, yes_or_no
from voice.v1 import agents_pb2

GREETING = demo_agent().greeting


@pytest.fixture(scope="module")
def policy() -> PolicyModel:
    return PolicyModel(demo_agent())


def intent(name: str) -> agents_pb2.Intent:
    return next(i for i in demo_agent().intents if i.name == name)


def booked(reply: PolicyReply) -> bool:
    return reply.matched in ("intent:book_appointment", "confirmed:book_appointment")


# Held-out sentences: none is one of the demo agent's phrases.
CANCEL_OR_MOVE = [
    "I need to cancel my appointment",
    "can you cancel my booking for tomorrow",
    "I'd like to reschedule my appointment with the doctor",
    "I can't make my appointment on Monday",
    "could I move my appointment to next week",
    "please change my appointment to the afternoon",
]
NEGATED_BOOKING = [
    "I don't want to book an appointment",
    "no I don't need an appointment, just a question",
    "I'm not looking to see the doctor",
]
QUESTIONS_NOT_BOOKINGS = [
    "is the doctor in on friday",
    "does the doctor see children",
    "when can I see the doctor",
]
NOT_ENDINGS = [
    "okay bye for now, actually wait one more question",
    "goodbye, no wait, what time do you open",
    "before I say bye, where do I park",
    "don't hang up, I have another question",
    "thanks, bye... oh and how much is a visit?",
]
CLEAR_ENDINGS = [
    "thanks, that's all, bye",
    "okay great, goodbye",
    "thank you so much, bye bye",
    "nothing else thanks, have a nice day",
]


@pytest.mark.parametrize("text", CANCEL_OR_MOVE)
def test_cancel_or_reschedule_is_never_a_booking(policy: PolicyModel, text: str) -> None:
    reply = policy.reply_to(text)
    assert reply.tool is None and not booked(reply)
    assert reply.text == CHANGE_WITH_TRANSFER  # offers the transfer, as a question


@pytest.mark.parametrize("text", NEGATED_BOOKING)
def test_negated_requests_are_not_carried_out(policy: PolicyModel, text: str) -> None:
    reply = policy.reply_to(text)
    assert reply.tool is None and not booked(reply), reply


@pytest.mark.parametrize("text", QUESTIONS_NOT_BOOKINGS)
def test_availability_questions_never_book(policy: PolicyModel, text: str) -> None:
    reply = policy.reply_to(text)
    assert reply.tool is None and not booked(reply), reply


def test_booking_waits_for_an_explicit_yes(policy: PolicyModel) -> None:
    ask = policy.reply_to(
        "could you put me down for a visit with the doctor, I'd like to book an appointment"
    )
    assert ask.text == confirmation_prompt(intent("book_appointment")) and ask.tool is None
    assert booked(policy.reply_to("yes please", agent_said=ask.text))
    assert policy.reply_to("no, not yet", agent_said=ask.text).matched == "declined:book_appointment"
    # A "yes" the recogniser is unsure of gets the question again, not the booking.
    again = policy.reply_to("yes", confidence=0.5, agent_said=ask.text)
    assert again.text == ask.text and not booked(again)
    # A "yes" to something else (the greeting) books nothing.
    assert not booked(policy.reply_to("yes", agent_said=GREETING))


def test_a_yes_to_a_question_cut_by_barge_in_still_counts(policy: PolicyModel) -> None:
    ask = confirmation_prompt(intent("book_appointment"))
    assert booked(policy.reply_to("yeah", agent_said=ask[:30]))


@pytest.mark.parametrize("text", NOT_ENDINGS)
def test_a_goodbye_that_goes_on_does_not_hang_up(policy: PolicyModel, text: str) -> None:
    reply = policy.reply_to(text)
    assert reply.tool is None or reply.tool.name != "end_call", reply
    assert call_ending(text) == "continuing"


@pytest.mark.parametrize("text", CLEAR_ENDINGS)
def test_a_clear_goodbye_ends_the_call(policy: PolicyModel, text: str) -> None:
    reply = policy.reply_to(text, confidence=0.9)
    assert reply.tool is not None and reply.tool.name == "end_call", reply


def test_an_unsure_goodbye_is_asked_about(policy: PolicyModel) -> None:
    reply = policy.reply_to("bye", confidence=0.5)
    assert reply.text == CONFIRM_END and reply.tool is None
    hang_up = policy.reply_to("yes", agent_said=CONFIRM_END)
    assert hang_up.tool is not None and hang_up.tool.name == "end_call"
    assert policy.reply_to("no", agent_said=CONFIRM_END).text == GO_ON


def test_low_confidence_gets_a_clarifying_question(policy: PolicyModel) -> None:
    for text in ("transfer me to reception please", "goodbye", "I would like to book an appointment"):
        reply = policy.reply_to(text, confidence=0.3)
        assert reply.text == CLARIFY and reply.tool is None


def test_explicit_transfer_request_transfers_and_a_vague_one_is_confirmed(policy: PolicyModel) -> None:
    explicit = policy.reply_to("please put me through to someone at reception, I want to speak to them")
    assert explicit.tool is not None and explicit.tool.name == "transfer_call"
    vague = policy.reply_to("um reception I guess")
    assert vague.tool is None and vague.matched == "confirm:talk_to_reception"
    yes = policy.reply_to("yes", agent_said=vague.text)
    assert yes.tool is not None and yes.tool.name == "transfer_call"
    # Asked for in so many words but heard unsurely: confirmed first.
    assert policy.reply_to("transfer me to reception please", confidence=0.55).tool is None
    # Offered after a cancellation request: a "yes" transfers, a "no" does not.
    assert policy.reply_to("sure", agent_said=CHANGE_WITH_TRANSFER).tool is not None
    assert policy.reply_to("no thanks", agent_said=CHANGE_WITH_TRANSFER).tool is None


def test_faq_answers_still_come_straight_away(policy: PolicyModel) -> None:
    assert policy.reply_to("how late are you open on saturdays").matched.startswith("faq:What are your")
    assert policy.reply_to("how much do you charge for a visit").matched.startswith("faq:How much")


@pytest.mark.parametrize(
    "text, answer",
    [
        ("yes please", "yes"),
        ("yeah go ahead", "yes"),
        ("no thanks", "no"),
        ("nope", "no"),
        ("yes no", "unsure"),
        ("what time is it", "unsure"),
        ("yes but first I want to ask about parking and the price", "unsure"),
    ],
)
def test_yes_or_no(text: str, answer: str) -> None:
    assert yes_or_no(text) == answer


async def test_the_stream_reads_confidence_and_the_agents_last_question() -> None:
    policy = PolicyModel(demo_agent())
    ask = confirmation_prompt(intent("book_appointment"))
    request = LlmRequest(
        system="",
        messages=[
            ChatMessage("user", "I'd like to book an appointment"),
            ChatMessage("assistant", ask),
            ChatMessage("user", "yes", confidence=0.95),
        ],
    )
    events = [e async for e in policy.stream(request)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == intent("book_appointment").response
    assert not [e for e in events if isinstance(e, ToolCallRequested)]
    assert events[-1] == Completed("end_turn")
    unsure = LlmRequest(
        system="", messages=[*request.messages[:2], ChatMessage("user", "yes", confidence=0.2)]
    )
    text = "".join([e.text async for e in policy.stream(unsure) if isinstance(e, TextDelta)])
    assert text == CLARIFY
