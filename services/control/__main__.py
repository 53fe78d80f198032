"""python -m services.control"""

from services.control.server import build_server
from services.shared.runner import run_service

if __name__ == "__main__":
    run_service("control", build_server)
