"""Rust audio hot path for Voice by aiConnected (see audio_core/src).

The compiled extension lives in ``audio_core._native``; this package re-exports its API.
"""

from audio_core._native import native_version

__all__ = ["native_version"]
