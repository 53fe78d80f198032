"""python -m gateway: the REST gateway on api_gateway.host:port (uvicorn, uvloop, httptools)."""

from __future__ import annotations

import sys

import uvicorn

from services.shared.deployment import check_deployment
from services.shared.logging import configure_logging
from services.shared.settings import SettingsError, load_settings


def main() -> None:
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
        workers=cfg.workers,
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
