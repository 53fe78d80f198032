"""python -m services.bridge"""

from services.bridge.server import build_server
from services.shared.runner import run_service

if __name__ == "__main__":
    run_service("bridge", build_server)
