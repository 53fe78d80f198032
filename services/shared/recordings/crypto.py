"""Envelope encryption of recordings: AES-256-GCM under a per-tenant data key, the data key wrapped by the
master key from the environment (RECORDING_MASTER_KEY).

Object format, version 1: b"VREC" | version (1 byte) | key version (4 bytes, big endian) | nonce (12) |
ciphertext+tag. The nonce is random per object; the tenant id and the call id are the associated data,
so an object copied under another tenant or call fails to decrypt instead of being served there.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.control.auth import resolve_secret  # the one place development secrets are made
from services.shared.settings import Settings, SettingsError

MAGIC = b"VREC"
VERSION = 1
_HEADER = struct.Struct(">4sBI12s")
NONCE_BYTES = 12


class RecordingCryptoError(RuntimeError):
    """A key or an object does not decrypt: wrong master key, tampered or misplaced object."""


def master_key(settings: Settings) -> bytes:
    """The 32-byte master key. Development/test without RECORDING_MASTER_KEY: a random key created once
    under .var/secrets/ (shared by the local processes); any other environment must set it."""
    try:
        raw = resolve_secret(settings, "recording_master_key").decode().strip()
        key = bytes.fromhex(raw)
    except (ValueError, UnicodeDecodeError):
        raise SettingsError("RECORDING_MASTER_KEY must be 64 hex characters (32 bytes)") from None
    if len(key) != 32:
        raise SettingsError("RECORDING_MASTER_KEY must be 64 hex characters (32 bytes)")
    return key


def _key_aad(tenant_id: str) -> bytes:
    return b"voice.recording-key.v1|" + tenant_id.encode()


def _object_aad(tenant_id: str, call_id: str) -> bytes:
    return b"voice.recording.v1|" + tenant_id.encode() + b"|" + call_id.encode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_key(master: bytes, tenant_id: str, data_key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, data_key, _key_aad(tenant_id))


def unwrap_key(master: bytes, tenant_id: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _key_aad(tenant_id))
    except InvalidTag:
        raise RecordingCryptoError(
            f"tenant {tenant_id}'s recording key does not unwrap: RECORDING_MASTER_KEY is not the key it "
            "was wrapped with"
        ) from None


def encrypt(data_key: bytes, key_version: int, tenant_id: str, call_id: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    header = _HEADER.pack(MAGIC, VERSION, key_version, nonce)
    return header + AESGCM(data_key).encrypt(nonce, plaintext, _object_aad(tenant_id, call_id))


def _parse(blob: bytes) -> tuple[bytes, int, int, bytes]:
    if len(blob) < _HEADER.size or blob[:4] != MAGIC:
        raise RecordingCryptoError("not a recording object (bad header)")
    magic, version, key_version, nonce = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise RecordingCryptoError(f"recording object version {version} is not supported")
    return magic, version, key_version, nonce


def decrypt(data_key: bytes, tenant_id: str, call_id: str, blob: bytes) -> bytes:
    _, _, _, nonce = _parse(blob)
    try:
        return AESGCM(data_key).decrypt(nonce, blob[_HEADER.size :], _object_aad(tenant_id, call_id))
    except InvalidTag:
        raise RecordingCryptoError(
            f"recording of call {call_id} does not decrypt for tenant {tenant_id}"
        ) from None
