"""`voice-bootstrap` (python -m services.control.bootstrap, `make bootstrap`): the operator's tenant
and its platform-admin API key on a fresh install, so there is a credential to call the API with.
Applies pending migrations first. Run by the operator only: the key it prints manages every tenant.

    voice-bootstrap --tenant "Acme Operations"            # refuses when tenants already exist

Customer tenants are then created through the API (`POST /v1/tenants` with the platform-admin key),
which answers with the new tenant's first tenant-admin key. The key is printed once; only its SHA-256
is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

import asyncpg

from services.control.api_keys import insert_api_key
from services.control.common import Conn
from services.control.migrate import migrate_url
from services.control.tenants import create_tenant
from services.shared.deployment import check_deployment
from services.shared.settings import SettingsError, load_settings
from voice.v1 import tenants_pb2


async def bootstrap(
    conn: Conn,
    tenant_name: str,
    *,
    trial_minutes: float,
    platform_admin: bool = True,
    permission: str = "admin",
    key_name: str = "bootstrap admin key",
) -> tuple[uuid.UUID, str, str]:
    """Creates a tenant and an API key for it in one transaction; returns (tenant id, key id, key).
    The operator's bootstrap makes the key a platform admin; everything else (the API's CreateTenant,
    the demo, tests) makes tenant-admin keys (`platform_admin=False`)."""
    async with conn.transaction():
        tenant = await create_tenant(conn, tenants_pb2.Tenant(name=tenant_name), trial_minutes)
        row, key = await insert_api_key(
            conn, tenant["id"], key_name, permission, None, platform_admin=platform_admin
        )
    return tenant["id"], str(row["id"]), key


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voice-bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True, help="name of the first tenant")
    parser.add_argument(
        "--force", action="store_true", help="create another platform-admin tenant even if tenants exist"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        check_deployment(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    await migrate_url(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        existing = await conn.fetchval("SELECT count(*) FROM tenants WHERE deleted_at IS NULL")
        if existing and not args.force:
            print(
                f"voice-bootstrap: {existing} tenant(s) already exist; use --force to add another",
                file=sys.stderr,
            )
            return 1
        tenant_id, key_id, key = await bootstrap(
            conn, args.tenant, trial_minutes=settings.control.trial_credit_minutes
        )
    finally:
        await conn.close()
    if args.json:
        print(json.dumps({"tenant_id": str(tenant_id), "api_key_id": key_id, "api_key": key}))
    else:
        print(f"tenant:  {tenant_id} ({args.tenant})")
        print(f"api key: {key}")
        print("Store the key now: it is shown only once. Send it as the X-API-Key header.")
    return 0


def main() -> None:
    raise SystemExit(asyncio.run(_main(sys.argv[1:])))


if __name__ == "__main__":
    main()
