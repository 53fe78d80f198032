"""Builds the providers a session uses from settings and the agent's record.

Process-wide providers (models loaded once: Silero, PocketSphinx's dictionary, the Triton connection,
the Deepgram and Anthropic clients, the breakers) are created once per server; per-agent ones (the LLM
chain with the agent's policy, the FAQ knowledge base, the tool runner) per call.

With `stt.provider = deepgram` and `llm.provider = anthropic` the providers are the spec 12.3 chains:
STT Deepgram nova-2 -> nova-1 -> PocketSphinx -> (session: "trouble hearing you" + transfer);
LLM Claude Sonnet -> Haiku -> cached answers (policy) -> apology + transfer;
TTS Triton (Chatterbox / espeak-ng) -> pre-recorded clips -> (session: transfer).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from anthropic import AsyncAnthropic

from services.agent.metrics import AgentMetrics
from services.agent.pipeline.chunker import SentenceChunker
from services.agent.pipeline.normalize import normalize_for_speech
from services.agent.pipeline.replies import TOOL_FILLER
from services.agent.pipeline.session import TROUBLE_HEARING, Providers
from services.agent.ports import (
    EndOfTurnModel,
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    ToolRunner,
    VoiceActivity,
)
from services.agent.profile import AgentProfile
from services.agent.providers.knowledge.local import FaqKnowledgeBase
from services.agent.providers.llm.anthropic import ClaudeModel, new_client
from services.agent.providers.llm.policy import PolicyModel
from services.agent.providers.stt.deepgram import DeepgramStt
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts.triton import TritonTextToSpeech, TtsUnavailableError
from services.agent.providers.turn.smart_turn import SmartTurn
from services.agent.providers.vad.energy import EnergyVad
from services.agent.providers.vad.silero import SileroVad
from services.agent.resilience import breaker as policies
from services.agent.resilience.llm import (
    APOLOGY,
    ApologyAndTransfer,
    CachedAnswers,
    FallbackLanguageModel,
    GuardedLanguageModel,
)
from services.agent.resilience.stt import FallbackSpeechToText, GuardedSpeechToText
from services.agent.resilience.telemetry import Telemetry
from services.agent.resilience.tts import ClipLibrary, FallbackTextToSpeech, GuardedTextToSpeech
from services.agent.tools.signing import tenant_secret
from services.agent.tools.webhook import WebhookToolRunner
from services.control.auth import resolve_secret
from services.shared.outbound_http import safe_client
from services.shared.settings import AgentServiceSettings, OutboundHttpSettings, Settings, SettingsError
from voice.v1 import agents_pb2

log = logging.getLogger(__name__)

# Lines the session itself may say; recorded as clips so they survive a TTS outage.

STANDARD_LINES = (TOOL_FILLER, APOLOGY, TROUBLE_HEARING)


@dataclass(frozen=True)
class ProviderSecrets:
    """Credentials from the environment (spec 7.3), kept apart from the agent section."""

    deepgram_api_key: str = ""
    anthropic_api_key: str = ""
    tool_webhook_secret: bytes = b""

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderSecrets:
        def reveal(value: object) -> str:
            getter = getattr(value, "get_secret_value", None)
            return str(getter()) if getter is not None else ""

        return cls(
            deepgram_api_key=reveal(settings.deepgram_api_key),
            anthropic_api_key=reveal(settings.anthropic_api_key),
            tool_webhook_secret=tool_master_secret(settings),
        )


def tool_master_secret(settings: Settings) -> bytes:
    """TOOL_WEBHOOK_SECRET; in development/test, when unset, the local one the control plane also uses
    (services/control/auth.py resolve_secret), so the secret a tenant reads is the one we sign with."""
    try:
        return resolve_secret(settings, "tool_webhook_secret")
    except SettingsError:
        return b""


def sentences(text: str) -> list[str]:
    """`text` as the session will send it to TTS: chunked into sentences and normalized."""
    chunker = SentenceChunker()
    return [normalize_for_speech(s) for s in [*chunker.push(text), *chunker.flush()]]


@dataclass
class ProviderFactory:
    vad: VoiceActivity
    stt: SpeechToText
    tts: TextToSpeech
    settings: AgentServiceSettings = field(default_factory=AgentServiceSettings)
    telemetry: Telemetry = field(default_factory=Telemetry)
    anthropic: AsyncAnthropic | None = None
    http: httpx.AsyncClient | None = None
    tool_secret: bytes = b""
    clips: ClipLibrary | None = None
    # Smart Turn when its model is installed; None: the fixed grace period decides ends of turn.
    turn: EndOfTurnModel | None = None

    @classmethod
    def from_settings(
        cls,
        settings: AgentServiceSettings,
        secrets_: ProviderSecrets | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        tts: TextToSpeech | None = None,
        outbound: OutboundHttpSettings | None = None,
    ) -> ProviderFactory:
        keys = secrets_ or ProviderSecrets()
        telemetry = Telemetry(clock)
        resilience = settings.resilience
        dead_air_s = resilience.max_dead_air_ms / 1000
        stall_s = resilience.stream_stall_ms / 1000
        vad: VoiceActivity = SileroVad() if settings.vad.model == "silero" else EnergyVad()
        turn: EndOfTurnModel | None = None
        try:
            turn = SmartTurn()
        except FileNotFoundError as exc:
            log.warning("no end-of-turn model: fixed grace periods", extra={"data": {"reason": str(exc)}})

        stt: SpeechToText
        if settings.stt.provider == "offline":
            stt = PocketSphinxStt()
        else:
            if not keys.deepgram_api_key:
                raise ValueError("stt.provider is deepgram but DEEPGRAM_API_KEY is not set")
            stt_tiers: list[SpeechToText] = []
            for tier in resilience.stt_chain:
                if tier == "offline":
                    stt_tiers.append(PocketSphinxStt())
                    continue
                model = settings.stt.model if tier == "primary" else settings.stt.fallback_model
                adapter = DeepgramStt(settings.stt, keys.deepgram_api_key, model=model)
                breaker = telemetry.breaker(f"deepgram:{model}", policies.DEEPGRAM)
                stt_tiers.append(GuardedSpeechToText(adapter, breaker, telemetry))
            stt = FallbackSpeechToText(
                stt_tiers, telemetry, final_stall_s=resilience.stt_final_stall_ms / 1000
            )

        primary_tts = tts or TritonTextToSpeech(settings.tts)
        clips = ClipLibrary(primary_tts.sample_rate)
        clips.want(s for line in STANDARD_LINES for s in sentences(line))
        guarded_tts = GuardedTextToSpeech(
            primary_tts,
            telemetry.breaker("chatterbox", policies.CHATTERBOX),
            telemetry,
            unavailable=(TtsUnavailableError, TimeoutError),
            first_audio_s=dead_air_s,
            next_audio_s=stall_s,
        )
        chain_tts = FallbackTextToSpeech([guarded_tts], clips, telemetry)

        anthropic = None
        if settings.llm.provider == "anthropic":
            if not keys.anthropic_api_key:
                raise ValueError("llm.provider is anthropic but ANTHROPIC_API_KEY is not set")
            anthropic = new_client(
                keys.anthropic_api_key,
                settings.llm.anthropic_base_url,
                timeout_s=settings.llm.request_timeout_seconds,
                max_retries=settings.llm.max_retries,
            )
        secret = keys.tool_webhook_secret
        if not secret:
            # Development: a per-process secret; tenants' endpoints cannot verify it (set it in production).
            log.warning("TOOL_WEBHOOK_SECRET is not set: tool webhooks are signed with a random secret")
            secret = secrets.token_bytes(32)
        return cls(
            vad=vad,
            turn=turn,
            stt=stt,
            tts=chain_tts,
            settings=settings,
            telemetry=telemetry,
            anthropic=anthropic,
            # Tool webhook URLs are the tenant's: public https addresses only (no SSRF).
            http=safe_client(
                outbound or OutboundHttpSettings(), timeout=settings.tools.webhook_timeout_seconds
            ),
            tool_secret=secret,
            clips=clips,
        )

    def attach_metrics(self, metrics: AgentMetrics) -> None:
        """errors_total and circuit_breaker_state of the server's registry."""
        self.telemetry.attach(metrics.errors, metrics.breaker_state)

    def for_agent(self, profile: AgentProfile) -> Providers:
        agent = profile.agent
        if self.clips is not None:
            self.clips.want(sentences(agent.greeting))
            self.clips.want(s for t in agent.tools if t.filler for s in sentences(t.filler))
        return Providers(
            vad=self.vad,
            stt=self.stt,
            llm=self._llm(agent),
            tts=self.tts,
            knowledge=FaqKnowledgeBase(agent),
            tools=self._tools(agent),
            turn=self.turn,
        )

    def _llm(self, agent: agents_pb2.Agent) -> LanguageModel:
        policy = PolicyModel(agent)
        if self.anthropic is None or agent.llm.provider == "policy":
            return policy
        llm = self.settings.llm
        resilience = self.settings.resilience
        tiers: list[LanguageModel] = []
        for tier in resilience.llm_chain:
            if tier == "policy":
                tiers.append(CachedAnswers(policy))
                continue
            if tier == "primary":
                model = agent.llm.model or llm.model
            else:
                model = agent.llm.fallback_model or llm.fallback_model
            tiers.append(
                GuardedLanguageModel(
                    ClaudeModel(self.anthropic, model),
                    self.telemetry.breaker(f"claude:{model}", policies.CLAUDE),
                    self.telemetry,
                    first_event_s=resilience.max_dead_air_ms / 1000,
                    next_event_s=resilience.stream_stall_ms / 1000,
                )
            )
        tiers.append(ApologyAndTransfer(agent))
        return FallbackLanguageModel(tiers, self.telemetry)

    def _tools(self, agent: agents_pb2.Agent) -> ToolRunner | None:
        webhooks = [t for t in agent.tools if t.kind == agents_pb2.TOOL_KIND_WEBHOOK]
        if not webhooks or self.http is None:
            return None
        return WebhookToolRunner(
            tools=webhooks,
            http=self.http,
            secret=tenant_secret(self.tool_secret, agent.tenant_id, agent.tool_signing_version or 1),
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            default_timeout_s=self.settings.tools.webhook_timeout_seconds,
            max_concurrent=self.settings.tools.max_concurrent_tools,
        )
