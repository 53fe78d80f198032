"""Where recording objects live: an S3-compatible server (production; locally versitygw from
scripts/services.sh) or, only as the demo's fallback when no S3 server runs, a folder.

`python -m services.shared.recordings.store ensure-bucket` creates the bucket (scripts/services.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any, Protocol

from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from services.shared.settings import RecordingSettings, Settings, SettingsError, load_settings

# The credentials scripts/services.sh gives the local versitygw; never accepted outside development/test.
LOCAL_ACCESS_KEY = "voice-local"
LOCAL_SECRET_KEY = "voice-local-secret"


class ObjectMissingError(LookupError):
    pass


class ObjectStore(Protocol):
    name: str

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class S3Store:
    """One aiobotocore client per store, created on first use (it binds to the running event loop)."""

    name = "s3"

    def __init__(self, cfg: RecordingSettings, access_key: str, secret_key: str) -> None:
        self._cfg = cfg
        self._credentials = (access_key, secret_key)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        endpoint_url=self._cfg.s3_endpoint,
                        region_name=self._cfg.s3_region,
                        aws_access_key_id=self._credentials[0],
                        aws_secret_access_key=self._credentials[1],
                        # Path-style: local servers have no per-bucket DNS names.
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
                    )
                )
            return self._client

    async def ensure_bucket(self) -> None:
        s3 = await self._s3()
        try:
            await s3.head_bucket(Bucket=self._cfg.bucket)
        except ClientError:
            await s3.create_bucket(Bucket=self._cfg.bucket)

    async def put(self, key: str, data: bytes) -> None:
        s3 = await self._s3()
        await s3.put_object(
            Bucket=self._cfg.bucket, Key=key, Body=data, ContentType="application/octet-stream"
        )

    async def get(self, key: str) -> bytes:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self._cfg.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissingError(key) from None
            raise
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self._cfg.bucket, Key=key)  # no error when already gone

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


class FileStore:
    """Objects as files under one folder; file I/O runs in a thread (never on the event loop)."""

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        path = (self._root / key).resolve()
        if not path.is_relative_to(self._root.resolve()):
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    async def put(self, key: str, data: bytes) -> None:
        def write() -> None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see half an object

        await asyncio.to_thread(write)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            raise ObjectMissingError(key) from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def close(self) -> None:
        return None


def open_store(settings: Settings) -> ObjectStore:
    cfg = settings.recordings
    if cfg.backend == "filesystem":
        return FileStore(Path(cfg.filesystem_path))
    if cfg.s3_access_key is not None and cfg.s3_secret_key is not None:
        return S3Store(cfg, cfg.s3_access_key.get_secret_value(), cfg.s3_secret_key.get_secret_value())
    if settings.environment in ("development", "test"):
        return S3Store(cfg, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)
    raise SettingsError("RECORDINGS__S3_ACCESS_KEY and RECORDINGS__S3_SECRET_KEY must be set")


async def _ensure_bucket() -> None:
    store = open_store(load_settings())
    if isinstance(store, S3Store):
        try:
            await store.ensure_bucket()
        finally:
            await store.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["ensure-bucket"]:
        sys.exit("usage: python -m services.shared.recordings.store ensure-bucket")
    asyncio.run(_ensure_bucket())
