"""A local peer speaking Deepgram's live transcription WebSocket protocol (`/v1/listen`).

Handshake: `Authorization: Token <key>` (401 otherwise), query parameters as the API takes them
(model, encoding, sample_rate, channels, interim_results, punctuate, smart_format, endpointing,
utterance_end_ms, vad_events, language, keywords); a test can make the handshake answer 429 or 5xx.
Client frames: binary audio; text `{"type": "KeepAlive"}`, `{"type": "Finalize"}`, `{"type": "CloseStream"}`.
Server frames: `Results` (channel.alternatives[0].transcript/confidence/words, start, duration,
is_final, speech_final, from_finalize, metadata), `SpeechStarted`, `UtteranceEnd`, and `Metadata`
after CloseStream, then a normal close. No audio or KeepAlive for `idle_timeout_s` closes with 1011
NET-0001, as Deepgram does.

What the peer "hears" is scripted: `utterances` is a queue of transcripts shared by all connections.
Audio since the last final counts as the current utterance; interim results grow word by word with the
audio received; Finalize (or `endpointing` ms of trailing silence) makes it final. A test can drop the
socket after some audio, delay answers, or refuse connections per model.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

BYTES_PER_SECOND = 16000 * 2
SPEECH_RMS = 300.0  # PCM16 RMS above which a 20 ms frame counts as speech (endpointing only)


@dataclass
class Connection:
    params: dict[str, str]
    headers: dict[str, str]
    audio_bytes: int = 0
    keepalives: int = 0
    finalizes: int = 0
    close_stream: bool = False
    close_code: int | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)


class DeepgramPeer:
    def __init__(self, api_key: str = "test-deepgram-key") -> None:
        self.api_key = api_key
        self.utterances: deque[str] = deque()
        self.connections: list[Connection] = []
        # Misbehaviour, settable per test.
        self.refuse: dict[str, int] = {}  # model -> HTTP status of the handshake answer
        self.drop_after_s: float | None = None  # abort the TCP connection after this much audio ...
        self.drops_left = 0  # ... this many times
        self.finalize_delay_s = 0.0
        self.idle_timeout_s = 10.0
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.utterances.clear()
        self.connections.clear()
        self.refuse.clear()
        self.drop_after_s = None
        self.drops_left = 0
        self.finalize_delay_s = 0.0
        self.idle_timeout_s = 10.0

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._handshake)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        if url.path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization", "") != f"Token {self.api_key}":
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid credentials.\n")
            response.headers["dg-error"] = "Invalid credentials."
            return response
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status = self.refuse.get(params.get("model", ""))
        if status:
            response = connection.respond(HTTPStatus(status), f"{HTTPStatus(status).phrase}\n")
            response.headers["dg-error"] = HTTPStatus(status).phrase
            return response
        if params.get("encoding") not in (None, "linear16") or params.get("sample_rate") not in (
            None,
            "16000",
        ):
            return connection.respond(HTTPStatus.BAD_REQUEST, "unsupported encoding\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlparse(ws.request.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        conn = Connection(params, dict(ws.request.headers.raw_items()))
        self.connections.append(conn)
        session = _Session(self, ws, conn)
        await session.run()


class _Session:
    def __init__(self, peer: DeepgramPeer, ws: ServerConnection, conn: Connection) -> None:
        self.peer = peer
        self.ws = ws
        self.conn = conn
        self.request_id = str(uuid.uuid4())
        self.model = conn.params.get("model", "nova-2")
        self.interim = conn.params.get("interim_results") == "true"
        self.endpointing_ms = int(conn.params.get("endpointing", "10"))
        self.stream_s = 0.0  # audio clock of this connection
        self.utterance_start_s = 0.0
        self.utterance_bytes = 0
        self.trailing_silence_s = 0.0
        self.interim_words = 0

    async def run(self) -> None:
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(self.ws.recv(), self.peer.idle_timeout_s)
                except TimeoutError:
                    self.conn.close_code = 1011
                    await self.ws.close(1011, "NET-0001")
                    return
                if isinstance(frame, bytes):
                    if await self._audio(frame):
                        return
                    continue
                message = json.loads(frame)
                kind = message.get("type")
                if kind == "KeepAlive":
                    self.conn.keepalives += 1
                elif kind == "Finalize":
                    self.conn.finalizes += 1
                    if self.peer.finalize_delay_s:
                        await asyncio.sleep(self.peer.finalize_delay_s)
                    await self._final(from_finalize=True, speech_final=False)
                elif kind == "CloseStream":
                    self.conn.close_stream = True
                    if self.utterance_bytes:
                        await self._final(from_finalize=False, speech_final=True)
                    await self._send(
                        {
                            "type": "Metadata",
                            "transaction_key": "deprecated",
                            "request_id": self.request_id,
                            "sha256": uuid.uuid4().hex * 2,
                            "created": "2026-01-01T00:00:00.000Z",
                            "duration": self.stream_s,
                            "channels": 1,
                            "models": [str(uuid.uuid4())],
                            "model_info": {},
                        }
                    )
                    self.conn.close_code = 1000
                    await self.ws.close(1000)
                    return
                else:
                    await self._send(
                        {"type": "Error", "variant": "SchemaError", "description": "unknown type"}
                    )
        except ConnectionClosed:
            return

    async def _audio(self, frame: bytes) -> bool:
        """Returns True when the peer dropped the connection."""
        self.conn.audio_bytes += len(frame)
        seconds = len(frame) / BYTES_PER_SECOND
        samples = np.frombuffer(frame[: len(frame) // 2 * 2], dtype="<i2").astype(np.float32)
        loud = samples.size > 0 and float(np.sqrt(np.mean(samples**2))) > SPEECH_RMS
        if self.utterance_bytes == 0:
            self.utterance_start_s = self.stream_s
        self.stream_s += seconds
        self.utterance_bytes += len(frame)
        peer = self.peer
        if (
            peer.drops_left
            and peer.drop_after_s is not None
            and self.conn.audio_bytes / BYTES_PER_SECOND >= peer.drop_after_s
        ):
            peer.drops_left -= 1
            self.conn.close_code = -1
            self.ws.transport.abort()  # no close frame: a network failure, not a goodbye
            return True
        if loud:
            self.trailing_silence_s = 0.0
        else:
            self.trailing_silence_s += seconds
            if self.trailing_silence_s * 1000 >= self.endpointing_ms and self._utterance_s() > 0.3:
                await self._final(from_finalize=False, speech_final=True)
                return False
        # An interim result per 0.3 s of audio, with the words "recognised so far".
        if self.interim and peer.utterances:
            words = peer.utterances[0].split()
            heard = min(len(words), int(self._utterance_s() / 0.3))
            if heard > self.interim_words:
                self.interim_words = heard
                await self._results(" ".join(words[:heard]), is_final=False, speech_final=False)
        return False

    def _utterance_s(self) -> float:
        return self.utterance_bytes / BYTES_PER_SECOND

    async def _final(self, *, from_finalize: bool, speech_final: bool) -> None:
        text = ""
        if self.utterance_bytes and self._utterance_s() > 0.15 and self.peer.utterances:
            text = self.peer.utterances.popleft()
        await self._results(text, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        self.utterance_bytes = 0
        self.interim_words = 0
        self.trailing_silence_s = 0.0

    async def _results(
        self, text: str, *, is_final: bool, speech_final: bool, from_finalize: bool = False
    ) -> None:
        start, duration = self.utterance_start_s, max(self.stream_s - self.utterance_start_s, 0.0)
        words = text.split()
        step = duration / max(len(words), 1)
        message: dict[str, Any] = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(duration, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": 0.98 if text else 0.0,
                        "words": [
                            {
                                "word": w.strip(".,?!").lower(),
                                "start": round(start + i * step, 3),
                                "end": round(start + (i + 1) * step, 3),
                                "confidence": 0.98,
                                "punctuated_word": w,
                            }
                            for i, w in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {
                    "name": f"2-general-{self.model}",
                    "version": "2024-01-01.0",
                    "arch": self.model,
                },
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.model)),
            },
        }
        if from_finalize:
            message["from_finalize"] = True
        await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        self.conn.sent.append(message)
        await self.ws.send(json.dumps(message))
