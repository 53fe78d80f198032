"""Versioned, forward-only schema migrations: `python -m services.control.migrate` (`make migrate`).

Each `migrations/NNNN_name.sql` runs once, in its own transaction, in version order, and is recorded in
`schema_migrations` with its SHA-256. An applied file that has since changed is an error: migrations are
immutable once applied; fix forward with a new file. A session-level advisory lock serialises
concurrent runners (several services or CI jobs starting together), so running it again is a no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.shared.settings import SettingsError, load_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary constant: the key of the advisory lock that serialises migration runners.
_LOCK_KEY = 7_300_001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """Applies the pending migrations on `conn`; returns those applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version INTEGER PRIMARY KEY,
                   name TEXT NOT NULL,
                   checksum TEXT NOT NULL,
                   applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW())"""
        )
        applied = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
        done: list[Migration] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                        "migrations are forward-only: add a new one instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def migrate_url(database_url: str) -> list[Migration]:
    migrations = await asyncio.to_thread(load_migrations)
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.control.migrate", description=__doc__)
    parser.add_argument("--database-url", help="default: DATABASE_URL from settings")
    args = parser.parse_args(argv)
    try:
        url = args.database_url or load_settings().database_url
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        done = await migrate_url(url)
    except (OSError, asyncpg.PostgresError, MigrationError) as exc:
        print(f"migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for m in done:
        print(f"applied {m.version:04d}_{m.name}")
    print("schema up to date" if done else "schema up to date (nothing to apply)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main(sys.argv[1:])))
