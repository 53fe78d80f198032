"""The agent service with fixed-latency providers, as its own process (the benchmark's target).

python -m benchmarks.agent.server --port 50070 --metrics-port 9170
"""

from __future__ import annotations

import argparse

from benchmarks.agent.fixed_providers import FixedLlm, FixedStt, FixedTts, Latencies
from services.agent.pipeline.session import Providers
from services.agent.profile import AgentProfile
from services.agent.providers.factory import ProviderFactory
from services.agent.providers.vad.energy import EnergyVad
from services.agent.providers.vad.silero import SileroVad
from services.agent.server import build_server
from services.shared.grpc_server import GrpcServer
from services.shared.runner import run_service
from services.shared.settings import Settings


class FixedProviderFactory(ProviderFactory):
    def __init__(self, latencies: Latencies, vad: str) -> None:
        super().__init__(
            vad=SileroVad() if vad == "silero" else EnergyVad(),
            stt=FixedStt(latencies.stt_ms),
            tts=FixedTts(latencies.tts_ms),
        )
        self.llm = FixedLlm(latencies.llm_ms)

    def for_agent(self, profile: AgentProfile) -> Providers:
        return Providers(vad=self.vad, stt=self.stt, llm=self.llm, tts=self.tts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--vad", choices=["energy", "silero"], default="energy")
    parser.add_argument(
        "--providers",
        choices=["fixed", "offline"],
        default="fixed",
        help="offline: the settings' own providers, the offline stack of make demo (Silero, PocketSphinx, "
        "the policy LLM, espeak-ng on Triton); --vad and the latencies are then ignored",
    )
    parser.add_argument("--stt-ms", type=float, default=Latencies.stt_ms)
    parser.add_argument("--llm-ms", type=float, default=Latencies.llm_ms)
    parser.add_argument("--tts-ms", type=float, default=Latencies.tts_ms)
    args = parser.parse_args()
    latencies = Latencies(args.stt_ms, args.llm_ms, args.tts_ms)

    def build(settings: Settings) -> GrpcServer:
        section = settings.agent_service.model_copy(
            update={"grpc_port": args.port, "metrics_port": args.metrics_port}
        )
        return build_server(
            settings.model_copy(update={"agent_service": section}),
            providers=FixedProviderFactory(latencies, args.vad) if args.providers == "fixed" else None,
        )

    run_service("agent-bench", build)


if __name__ == "__main__":
    main()
