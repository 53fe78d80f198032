"""python -m services.worker"""

from services.shared.runner import run_service
from services.worker.server import build_server

if __name__ == "__main__":
    run_service("worker", build_server)
