"""Recording building blocks without services: the stereo timeline, resampling, the encrypted object
format (version, nonce, associated data) and the filesystem fallback store."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from services.shared.recordings import crypto
from services.shared.recordings.stereo import StereoRecorder
from services.shared.recordings.store import FileStore, ObjectMissingError

TENANT = "0b5e8f0c-3d7e-4a59-9b61-1f2a3c4d5e6f"
CALL = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"


def tone(value: int, n: int) -> bytes:
    return (np.full(n, value, np.int16)).tobytes()


async def test_agent_audio_starts_where_the_caller_stream_is_and_is_resampled() -> None:
    clock = [0.0]
    rec = StereoRecorder(16000, clock=lambda: clock[0])
    for i in range(50):  # one second of caller audio, 20 ms frames
        clock[0] = i * 0.02
        rec.caller(tone(1000, 320))
        if i >= 25:  # the agent answers half a second in, at 24 kHz
            rec.agent(tone(-2000, 480), 24000)
    data = await rec.finish()
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 16000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    # The agent's first frame was sent after the caller's 26th had arrived: it starts there, and its
    # 25 frames at 24 kHz become 25 * 320 samples at 16 kHz; the caller's side ends in silence.
    assert len(frames) == 26 * 320 + 25 * 320
    assert (frames[:16000, 0] == 1000).all() and (frames[16000:, 0] == 0).all()
    agent = np.flatnonzero(frames[:, 1])
    assert agent[0] == 26 * 320 and len(agent) == 25 * 320 and (frames[agent, 1] == -2000).all()


async def test_a_silent_side_is_filled_from_the_wall_clock() -> None:
    clock = [0.0]
    rec = StereoRecorder(8000, clock=lambda: clock[0])
    rec.agent(tone(500, 80), 8000)
    clock[0] = 3.0  # the caller sent nothing for three seconds
    rec.agent(tone(500, 80), 8000)
    data = await rec.finish()
    with wave.open(io.BytesIO(data)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    # The second agent frame lands about two seconds in (3 s minus the one-second slack), not at 10 ms.
    second = np.flatnonzero(frames[:, 1])[-1]
    assert second >= 2 * 8000 and (frames[:, 0] == 0).all()


def test_objects_are_versioned_nonced_and_bound_to_tenant_and_call() -> None:
    master = bytes(range(32))
    data_key = crypto.new_data_key()
    wrapped = crypto.wrap_key(master, TENANT, data_key)
    assert crypto.unwrap_key(master, TENANT, wrapped) == data_key
    with pytest.raises(crypto.RecordingCryptoError, match="RECORDING_MASTER_KEY"):
        crypto.unwrap_key(bytes(32), TENANT, wrapped)
    with pytest.raises(crypto.RecordingCryptoError):
        crypto.unwrap_key(master, CALL, wrapped)  # another tenant's row

    one = crypto.encrypt(data_key, 1, TENANT, CALL, b"RIFF....WAVE")
    two = crypto.encrypt(data_key, 1, TENANT, CALL, b"RIFF....WAVE")
    assert one[:5] == b"VREC\x01" and one != two  # a fresh nonce per object
    assert crypto.decrypt(data_key, TENANT, CALL, one) == b"RIFF....WAVE"
    with pytest.raises(crypto.RecordingCryptoError):
        crypto.decrypt(data_key, TENANT, TENANT, one)  # moved under another call
    with pytest.raises(crypto.RecordingCryptoError, match="version 9"):
        crypto.decrypt(data_key, TENANT, CALL, one[:4] + b"\x09" + one[5:])
    with pytest.raises(crypto.RecordingCryptoError, match="bad header"):
        crypto.decrypt(data_key, TENANT, CALL, b"RIFF" + one[4:])


async def test_filesystem_store_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put(f"{TENANT}/{CALL}.vrec", b"sealed")
    assert await store.get(f"{TENANT}/{CALL}.vrec") == b"sealed"
    await store.delete(f"{TENANT}/{CALL}.vrec")
    await store.delete(f"{TENANT}/{CALL}.vrec")  # deleting twice is fine (retention re-runs)
    with pytest.raises(ObjectMissingError):
        await store.get(f"{TENANT}/{CALL}.vrec")
    with pytest.raises(ValueError, match="leaves the store"):
        await store.put("../escape", b"x")
