"""The maturin build chain: the Rust extension is importable from the platform environment."""

import audio_core


def test_native_extension_loads() -> None:
    assert audio_core.native_version().count(".") == 2
