"""python -m services.agent: `agent_service.capacity.processes` processes (0: one per core) on one port."""

from services.agent.server import build_server
from services.shared.runner import run_service
from services.shared.settings import AgentServiceSettings, Settings


def _processes(settings: Settings) -> tuple[str, AgentServiceSettings, int]:
    return "AGENT_SERVICE", settings.agent_service, settings.agent_service.capacity.processes


if __name__ == "__main__":
    run_service("agent", build_server, processes=_processes)
