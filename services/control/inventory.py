"""The platform's phone-number inventory: the numbers the operator has provisioned with the carrier.
Tenants add numbers only from it (NumberService.CreateNumber); the operator fills it.

    python -m services.control.inventory +15551230001 +15551230002 [--provider sip]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable

import asyncpg

from services.control.common import E164, Conn
from services.shared.deployment import check_deployment
from services.shared.settings import SettingsError, load_settings


async def provision(conn: Conn, numbers: Iterable[str], provider: str = "gotoconnect") -> int:
    """Adds `numbers` (E.164) to the inventory; returns how many were new. Idempotent."""
    wanted = list(dict.fromkeys(numbers))
    bad = [n for n in wanted if not E164.fullmatch(n)]
    if bad:
        raise ValueError(f"not E.164 numbers: {', '.join(bad)}")
    added = await conn.fetchval(
        """WITH added AS (
             INSERT INTO number_inventory (e164, provider) SELECT unnest($1::text[]), $2
             ON CONFLICT DO NOTHING RETURNING 1)
           SELECT count(*) FROM added""",
        wanted,
        provider,
    )
    return int(added or 0)


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.control.inventory", description=__doc__)
    parser.add_argument("numbers", nargs="+", help="E.164 numbers, e.g. +15551230001")
    parser.add_argument("--provider", default="gotoconnect", choices=("gotoconnect", "sip"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        check_deployment(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    conn = await asyncpg.connect(settings.database_url)
    try:
        added = await provision(conn, args.numbers, args.provider)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        await conn.close()
    print(f"{added} number(s) added to the inventory ({len(args.numbers) - added} already there)")
    return 0


def main() -> None:
    raise SystemExit(asyncio.run(_main(sys.argv[1:])))


if __name__ == "__main__":
    main()
