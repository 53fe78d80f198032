"""PostgreSQL (system of record) through an asyncpg pool sized from settings."""

from __future__ import annotations

import asyncpg

from services.shared.settings import Settings


async def create_pool(
    settings: Settings, *, connection_class: type[asyncpg.Connection] = asyncpg.Connection
) -> asyncpg.Pool:
    """A pool of `database_pool_size` connections that may grow by `database_max_overflow`."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=min(2, settings.database_pool_size),
        max_size=settings.database_pool_size + settings.database_max_overflow,
        command_timeout=30,
        connection_class=connection_class,
    )
    if pool is None:  # only when created with an explicit loop and not awaited; never here
        raise RuntimeError("asyncpg returned no pool")
    return pool
