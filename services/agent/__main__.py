"""python -m services.agent"""

from services.agent.server import build_server
from services.shared.runner import run_service

if __name__ == "__main__":
    run_service("agent", build_server)
