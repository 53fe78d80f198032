"""The SpeechToText port on Deepgram's live transcription WebSocket (`/v1/listen`), with `deepgram-sdk`.

One socket per call: 16 kHz linear16 mono, interim results, punctuation and smart formatting, Deepgram's
endpointing and UtteranceEnd events, keywords from the agent's vocabulary. While the caller is silent the
session pushes no audio, so a KeepAlive goes out every `keepalive_seconds` (Deepgram closes a socket that
hears nothing for 10 s). `finalize()` sends Finalize: Deepgram flushes what it holds and answers with a
final result marked `from_finalize`, which we always pass on (even empty) so the session knows the
caller's words are complete. `aclose()` sends CloseStream and drains the last results and Metadata.

Failures (handshake 401/429/5xx, an error close such as 1011 NET-0001, a dropped socket, an Error
message) become ProviderUnavailable from `push()` or from `results()`; the fallback chain
(resilience/stt.py) reconnects or switches and replays the utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import websockets
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import AsyncV1SocketClient
from deepgram.listen.v1.types.listen_v1error import ListenV1Error
from deepgram.listen.v1.types.listen_v1results import ListenV1Results
from deepgram.listen.v1.types.listen_v1utterance_end import ListenV1UtteranceEnd

from services.agent.ports import ProviderUnavailable, SttContext, Transcription
from services.shared.settings import SttSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_KEYWORDS = 50
CLOSE_DRAIN_S = 2.0


def environment(url: str) -> DeepgramClientEnvironment:
    """The SDK's environment for one base URL (wss://api.deepgram.com, or ws://127.0.0.1:PORT in tests)."""
    ws = url.rstrip("/")
    http = ws.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


class DeepgramStt:
    """Create once per process and model; `open()` per call."""

    sample_rate = SAMPLE_RATE

    def __init__(self, settings: SttSettings, api_key: str, *, model: str | None = None) -> None:
        self._settings = settings
        self.model = model or settings.model
        self.name = f"deepgram:{self.model}"
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment(settings.deepgram_url))

    async def open(self, context: SttContext) -> DeepgramStream:
        s = self._settings
        keywords = [k for k in dict.fromkeys([*context.keywords]) if k and " " not in k][:MAX_KEYWORDS]
        params: dict[str, Any] = {
            "model": self.model,
            "language": context.language or s.language,
            "encoding": "linear16",
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "interim_results": "true" if s.interim_results else "false",
            "punctuate": "true" if s.punctuate else "false",
            "smart_format": "true" if s.smart_format else "false",
            "endpointing": s.endpointing_ms,
            "utterance_end_ms": s.utterance_end_ms if s.interim_results else None,
            "vad_events": "true",
        }
        if keywords:
            params["keywords"] = keywords
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(s.connect_timeout_seconds):
                socket = await stack.enter_async_context(
                    self._client.listen.v1.connect(**{k: v for k, v in params.items() if v is not None})
                )
        except ApiError as exc:
            await stack.aclose()
            raise ProviderUnavailable(self.name, f"handshake refused: HTTP {exc.status_code}") from None
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            await stack.aclose()
            raise ProviderUnavailable(self.name, f"cannot connect: {type(exc).__name__}: {exc}") from None
        stream = DeepgramStream(self.name, socket, stack, s.keepalive_seconds)
        stream.start()
        return stream


class DeepgramStream:
    def __init__(
        self, name: str, socket: AsyncV1SocketClient, stack: contextlib.AsyncExitStack, keepalive_s: float
    ) -> None:
        self.name = name
        self._socket = socket
        self._stack = stack
        self._keepalive_s = keepalive_s
        self._results: asyncio.Queue[Transcription | ProviderUnavailable | None] = asyncio.Queue()
        self._last_sent = time.monotonic()
        self._closing = False
        self._failed: ProviderUnavailable | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.request_id = ""
        self.keepalives_sent = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read(), name="deepgram-reader"),
            asyncio.create_task(self._keepalive(), name="deepgram-keepalive"),
        ]

    async def push(self, pcm16: bytes) -> None:
        await self._send(self._socket.send_media(pcm16))

    async def finalize(self) -> None:
        await self._send(self._socket.send_finalize())

    async def _send(self, sending: Any) -> None:
        if self._failed is not None:
            sending.close()
            raise self._failed
        try:
            await sending
        except websockets.exceptions.ConnectionClosed as exc:
            raise self._fail(f"socket closed ({exc.code} {exc.reason})") from None
        self._last_sent = time.monotonic()

    def _fail(self, reason: str) -> ProviderUnavailable:
        if self._failed is None:
            self._failed = ProviderUnavailable(self.name, reason)
            self._results.put_nowait(self._failed)
        return self._failed

    async def results(self) -> AsyncIterator[Transcription]:
        while (item := await self._results.get()) is not None:
            if isinstance(item, ProviderUnavailable):
                raise item
            yield item

    async def _read(self) -> None:
        try:
            while True:
                message = await self._socket.recv()
                if isinstance(message, ListenV1Results):
                    self._on_results(message)
                elif isinstance(message, ListenV1UtteranceEnd):
                    pass  # our own endpointing (Silero) decides turns; finals arrive as Results
                elif isinstance(message, ListenV1Error):
                    self._fail(f"error message: {message.description}")
                    return
                elif getattr(message, "type", "") == "Metadata":
                    self.request_id = str(getattr(message, "request_id", ""))
        except websockets.exceptions.ConnectionClosed as exc:
            if not self._closing:
                self._fail(f"socket closed ({exc.code} {exc.reason})")
        except Exception as exc:  # a malformed frame is the provider's failure, not the call's
            self._fail(f"unreadable message: {type(exc).__name__}")
        finally:
            self._results.put_nowait(None)

    def _on_results(self, message: ListenV1Results) -> None:
        alternatives = message.channel.alternatives
        best = alternatives[0] if alternatives else None
        text = best.transcript.strip() if best is not None else ""
        final = bool(message.is_final)
        if not text and not (final and message.from_finalize):
            return  # silence; but the answer to Finalize always goes on, even empty
        self._results.put_nowait(
            Transcription(
                text=text,
                is_final=final,
                confidence=float(best.confidence) if best is not None else 0.0,
                start_s=float(message.start),
                end_s=float(message.start + message.duration),
            )
        )

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            if time.monotonic() - self._last_sent >= self._keepalive_s:
                try:
                    await self._send(self._socket.send_keep_alive())
                except ProviderUnavailable:
                    return
                self.keepalives_sent += 1

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        keepalive = self._tasks[1] if self._tasks else None
        if keepalive is not None:
            keepalive.cancel()
        if self._failed is None:
            with contextlib.suppress(Exception):
                await self._socket.send_close_stream()
                # Deepgram answers CloseStream with the last results and Metadata, then closes.
                async with asyncio.timeout(CLOSE_DRAIN_S):
                    await asyncio.shield(self._tasks[0])
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        self._results.put_nowait(None)
