"""Fixtures: a control plane on a fresh schema and the REST gateway in front of it (see
tests/control/env.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.shared.settings import RateLimitSettings, Settings
from tests.control.env import ControlPlane, RunningGateway, control_plane, running_gateway


@pytest.fixture(scope="session")
async def cp(settings: Settings) -> AsyncIterator[ControlPlane]:
    async with control_plane(settings) as plane:
        yield plane


@pytest.fixture(scope="session")
async def gw(cp: ControlPlane) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        cp,
        rate_limiting=RateLimitSettings(
            default_limit=100_000, burst_limit=1_000, failed_auth_limit=1_000_000
        ),
    ) as g:
        yield g


@pytest.fixture(scope="session")
async def http(gw: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        yield client
