"""python -m gateway [--workers N]: the REST gateway on api_gateway.host:port (uvicorn, uvloop,
httptools). N worker processes (default `api_gateway.workers`) accept on one listening socket that the
parent opens before forking them, so the node's cores share the requests; the parent restarts a worker
that dies and stops them all on SIGTERM."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from services.shared.deployment import check_deployment
from services.shared.logging import configure_logging
from services.shared.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="The REST gateway.")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (api_gateway.workers)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = load_settings()
        check_deployment(settings)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(
        "gateway", level=settings.log_level, fmt=settings.log_format, instance=settings.instance_id or None
    )
    cfg = settings.api_gateway
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=args.workers or cfg.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        # Our own body limit answers 413; keep uvicorn's defaults otherwise.
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
