"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from services.shared.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment; defaults reach the local services of scripts/services.sh."""
    return load_settings()
