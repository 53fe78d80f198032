"""Builds the providers a session uses from settings and the agent's record.

Process-wide providers (models loaded once: Silero, PocketSphinx's dictionary, the Triton connection)
are created once per server; per-agent ones (the policy LLM, the FAQ knowledge base) per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.agent.pipeline.session import Providers
from services.agent.ports import SpeechToText, TextToSpeech, VoiceActivity
from services.agent.profile import AgentProfile
from services.agent.providers.knowledge.local import FaqKnowledgeBase
from services.agent.providers.llm.policy import PolicyModel
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts.triton import TritonTextToSpeech
from services.agent.providers.vad.energy import EnergyVad
from services.agent.providers.vad.silero import SileroVad
from services.shared.settings import AgentServiceSettings


@dataclass
class ProviderFactory:
    vad: VoiceActivity
    stt: SpeechToText
    tts: TextToSpeech

    @classmethod
    def from_settings(cls, settings: AgentServiceSettings) -> ProviderFactory:
        vad: VoiceActivity = SileroVad() if settings.vad.model == "silero" else EnergyVad()
        if settings.stt.provider != "offline":
            raise NotImplementedError(f"STT provider {settings.stt.provider!r} is not available yet")
        if settings.llm.provider != "policy":
            raise NotImplementedError(f"LLM provider {settings.llm.provider!r} is not available yet")
        return cls(vad=vad, stt=PocketSphinxStt(), tts=TritonTextToSpeech(settings.tts))

    def for_agent(self, profile: AgentProfile) -> Providers:
        return Providers(
            vad=self.vad,
            stt=self.stt,
            llm=PolicyModel(profile.agent),
            tts=self.tts,
            knowledge=FaqKnowledgeBase(profile.agent),
        )
