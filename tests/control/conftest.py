"""Fixtures: one migrated schema and control-plane server per session (see env.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.shared.settings import Settings
from tests.control.env import ControlPlane, control_plane


@pytest.fixture(scope="session")
async def cp(settings: Settings) -> AsyncIterator[ControlPlane]:
    async with control_plane(settings) as plane:
        yield plane
