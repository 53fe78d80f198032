"""What the engine needs to know about one agent, read from its `voice.v1.Agent` record, with the
service's defaults (spec 3.3.5) filled in where the record leaves a setting unset."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict

from services.agent.ports import SttContext, ToolSpec, VoiceSelection
from services.shared.settings import AgentServiceSettings
from voice.v1 import agents_pb2

BUILTIN_TOOLS = {
    agents_pb2.TOOL_KIND_TRANSFER_CALL: ToolSpec(
        "transfer_call",
        "Transfer the caller to a human or department.",
        {
            "type": "object",
            "properties": {
                "target": {"type": "string", "description": "Number, ext:NNNN or queue"},
                "type": {"type": "string", "enum": ["blind", "warm", "conference"]},
                "context": {"type": "string", "description": "Briefing for the person taking the call"},
                "reason": {"type": "string"},
            },
            "required": ["target"],
        },
    ),
    agents_pb2.TOOL_KIND_END_CALL: ToolSpec(
        "end_call",
        "End the call politely once the caller is done.",
        {"type": "object", "properties": {"reason": {"type": "string"}}},
    ),
}


@dataclass(frozen=True)
class TenantVoice(VoiceSelection):
    """The agent's voice and whose agent it is: the TTS node speaks a cloned voice only for its tenant."""

    tenant_id: str = ""


@dataclass(frozen=True)
class TurnTaking:
    vad_threshold: float
    min_speech_ms: int
    min_silence_ms: int
    # After the caller stops: wait this long for more speech before answering.
    grace_ms: int
    # ... or this long when the words so far end like an unfinished number or spelling.
    unfinished_grace_ms: int
    barge_in_min_speech_ms: int
    # Voiced audio from the VAD onset that pauses the agent's playout (0: never pause, clear only).
    barge_in_pause_ms: int
    # An interruption with no words recognised within this time was noise: re-offer the reply.
    false_interruption_ms: int
    idle_prompt_s: float
    max_idle_prompts: int
    max_call_s: float


@dataclass(frozen=True)
class AgentProfile:
    agent: agents_pb2.Agent
    voice: VoiceSelection
    turn_taking: TurnTaking
    tools: tuple[ToolSpec, ...]
    max_history_tokens: int
    summarize_after_turns: int
    greeting_enabled: bool
    max_tokens: int
    temperature: float

    @property
    def stt_context(self) -> SttContext:
        """Phrases a caller of this agent plausibly says, to bias the recogniser."""
        agent = self.agent
        phrases = [f.question for f in agent.faq]
        phrases += [p for intent in agent.intents for p in intent.phrases]
        phrases += [t.name for t in agent.transfer_targets]
        keywords = [*agent.stt.keywords, *(k for f in agent.faq for k in f.keywords), agent.name]
        return SttContext(language=agent.language or "en-US", phrases=phrases, keywords=keywords)


def build_profile(agent: agents_pb2.Agent, defaults: AgentServiceSettings) -> AgentProfile:
    conv, vad = agent.conversation, agent.vad
    turn_taking = TurnTaking(
        vad_threshold=vad.threshold if vad.HasField("threshold") else defaults.vad.threshold,
        min_speech_ms=vad.min_speech_duration_ms or defaults.vad.min_speech_duration_ms,
        min_silence_ms=vad.min_silence_duration_ms or defaults.vad.min_silence_duration_ms,
        grace_ms=defaults.turn_taking.grace_ms,
        unfinished_grace_ms=defaults.turn_taking.unfinished_grace_ms,
        barge_in_min_speech_ms=conv.barge_in_min_speech_ms or defaults.turn_taking.barge_in_min_speech_ms,
        barge_in_pause_ms=defaults.turn_taking.barge_in_pause_ms,
        false_interruption_ms=defaults.turn_taking.false_interruption_ms,
        idle_prompt_s=float(conv.idle_prompt_seconds or defaults.turn_taking.idle_prompt_seconds),
        max_idle_prompts=conv.max_idle_prompts or defaults.turn_taking.max_idle_prompts,
        max_call_s=float(conv.max_call_duration_seconds or defaults.turn_taking.max_call_duration_seconds),
    )
    tools = []
    for tool in agent.tools:
        if tool.kind in BUILTIN_TOOLS:
            tools.append(BUILTIN_TOOLS[tool.kind])
        else:
            schema = MessageToDict(tool.input_schema) if tool.HasField("input_schema") else {"type": "object"}
            tools.append(ToolSpec(tool.name, tool.description, schema))
    tts = agent.tts
    return AgentProfile(
        agent=agent,
        voice=TenantVoice(
            tenant_id=agent.tenant_id,
            voice_id=tts.voice_id or defaults.tts.default_voice_id,
            exaggeration=tts.exaggeration if tts.HasField("exaggeration") else None,
            cfg_weight=tts.cfg_weight if tts.HasField("cfg_weight") else None,
        ),
        turn_taking=turn_taking,
        tools=tuple(tools),
        max_history_tokens=conv.max_history_tokens or defaults.conversation.max_history_tokens,
        summarize_after_turns=conv.summarize_after_turns or defaults.conversation.summarize_after_turns,
        greeting_enabled=(
            conv.greeting_enabled
            if conv.HasField("greeting_enabled")
            else defaults.conversation.greeting_enabled
        ),
        max_tokens=agent.llm.max_tokens or defaults.llm.max_tokens,
        temperature=agent.llm.temperature if agent.llm.HasField("temperature") else defaults.llm.temperature,
    )
