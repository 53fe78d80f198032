"""The agent service: AgentSessionService.Converse, one conversation per call.

Each call is an independent CallSession; a failure in one (bad input, a provider error) ends only that
stream with a gRPC status. The servicer validates the Start message, loads the agent and hands the
stream to the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from services.agent.admission import AdmissionError, CallAdmission
from services.agent.demo_agent import demo_agent
from services.agent.directory import (
    AgentDirectory,
    AgentNotFoundError,
    ControlPlaneDirectory,
    DirectoryUnavailableError,
    LayeredDirectory,
    StaticDirectory,
)
from services.agent.events import CallEventSink, NullEventSink
from services.agent.load import LoadMonitor
from services.agent.metrics import AgentMetrics
from services.agent.pipeline.errors import SessionError
from services.agent.pipeline.session import CallSession
from services.agent.profile import build_profile
from services.agent.providers.factory import ProviderFactory, ProviderSecrets
from services.shared.events import call_event_id, check_id, new_event
from services.shared.events_publisher import EventPublisher
from services.shared.grpc_server import Context, GrpcServer, bind
from services.shared.logging import log_context
from services.shared.recordings.writer import RecordingWriter
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2, agent_session_pb2_grpc, events_pb2

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


SessionObserver = Callable[[CallSession], None]


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


class AgentSessionServicer(agent_session_pb2_grpc.AgentSessionServiceServicer):
    def __init__(
        self,
        settings: Settings,
        *,
        directory: AgentDirectory,
        providers: ProviderFactory,
        metrics: AgentMetrics,
        observer: SessionObserver | None = None,
        events: CallEventSink | None = None,
        recordings: RecordingWriter | None = None,
        load: LoadMonitor | None = None,
    ) -> None:
        self._settings = settings.agent_service
        # This process' load: a full process refuses new sessions so the caller goes elsewhere (load.py).
        self._load = load
        # Records the calls whose agent asks for it (conversation.recording_enabled).
        self._recordings = recordings
        self._directory = directory
        self._providers = providers
        self._metrics = metrics
        # Called with each session when it ends (transcript archiving, tests inspecting the history).
        self._observer = observer
        self._events = events or NullEventSink()
        # Who may start a call, and its slot of the tenant's concurrent-call limit (admission.py).
        self.admission = CallAdmission(settings)
        # (tenant, call id) of the sessions in progress: a second Start for a live call is refused.
        self._live: set[tuple[str, str]] = set()

    async def Converse(
        self, request_iterator: AsyncIterator[agent_session_pb2.ConverseRequest], context: Context
    ) -> AsyncIterator[agent_session_pb2.ConverseResponse]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), START_TIMEOUT_S)
        except DecodeError:
            raise  # the server helper answers INVALID_ARGUMENT for malformed messages
        except (TimeoutError, StopAsyncIteration):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start` (none received)"
            )
        if first.WhichOneof("event") != "start":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message must be `start`, got `{first.WhichOneof('event') or 'nothing'}`",
            )
        start = first.start
        missing = [name for name in ("call_id", "tenant_id", "agent_id") if not getattr(start, name)]
        if missing:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"start: missing {', '.join(missing)}")
        # Ids travel in event subjects and rows: bounded and subject-safe, refused before anything starts.
        for name in ("call_id", "tenant_id"):
            try:
                check_id(getattr(start, name), name)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"start: {exc}")
        if self._load is not None:
            refusal = self._load.admit()
            if refusal is not None:
                # gRPC's retry pushback: clients with a retry policy wait this long; ours read it too.
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    refusal.details,
                    (("grpc-retry-pushback-ms", str(refusal.retry_after_ms)),),
                )
            load = self._load
            context.add_done_callback(lambda _: load.leave())  # type: ignore[arg-type]
        key = (start.tenant_id, start.call_id)
        if key in self._live:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"call {start.call_id!r} already has a session in progress"
            )
        try:
            admission = await self.admission.admit(context, start)
        except AdmissionError as exc:
            await context.abort(exc.code, exc.message)
        # The slot is held for as long as the RPC lives, however it ends (abort, cancel, hang-up).
        holder = asyncio.create_task(self.admission.hold(admission), name=f"slot-{start.call_id}")
        # (the stubs type the callback as a class, not a callable)
        context.add_done_callback(lambda _: _cancel(holder))  # type: ignore[arg-type]
        output_rate = self._providers.tts.sample_rate
        try:
            agent = await self._directory.get(start.tenant_id, start.agent_id)
        except AgentNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except DirectoryUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"agent configuration unavailable ({exc})")
        profile = build_profile(agent, self._settings)
        out: asyncio.Queue[agent_session_pb2.ConverseResponse | None] = asyncio.Queue()
        with log_context(tenant_id=start.tenant_id, call_id=start.call_id):
            try:
                session = CallSession(
                    start=start,
                    profile=profile,
                    providers=self._providers.for_agent(profile),
                    metrics=self._metrics,
                    emit=out.put_nowait,
                    output_sample_rate=output_rate,
                    events=self._events,
                )
            except SessionError as exc:
                await context.abort(exc.code, exc.message)
            if key in self._live:  # a concurrent Start for the same call won the race meanwhile
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"call {start.call_id!r} already has a session in progress",
                )
            self._live.add(key)
            # Calls straight on Converse (a tenant's credential, counted here); the bridge records the
            # phone calls it carries itself, so a bridged session is never recorded twice.
            if self._recordings is not None and admission.counted and agent.conversation.recording_enabled:
                session.recorder = self._recordings.start(
                    start.tenant_id, start.call_id, agent_rate=output_rate
                )
            log.info("session started", extra={"data": {"agent_id": start.agent_id}})
            self._metrics.calls_active.labels(start.tenant_id).inc()
            task = asyncio.create_task(session.run(request_iterator), name=f"call-{start.call_id}")
            task.add_done_callback(lambda _: out.put_nowait(None))
            status = "completed"
            try:
                while (message := await out.get()) is not None:
                    yield message
                error = task.exception() if not task.cancelled() else None
                if isinstance(error, DecodeError):
                    status = "rejected"
                    raise error
                if isinstance(error, SessionError):
                    status = "rejected"
                    await context.abort(error.code, error.message)
                if error is not None:
                    status = "failed"
                    log.error("session failed", exc_info=error)
                    await context.abort(grpc.StatusCode.INTERNAL, f"session failed: {type(error).__name__}")
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                self._live.discard(key)
                if self._recordings is not None and session.recorder is not None:
                    self._recordings.finish_later(session.recorder)  # WAV, encryption, upload off the RPC
                self._publish_ended(session, status)
                self._metrics.calls_active.labels(start.tenant_id).dec()
                direction = "outbound" if start.direction == 2 else "inbound"
                self._metrics.calls_total.labels(start.tenant_id, direction, status).inc()
                log.info("session ended", extra={"data": {"status": status}})
                if self._observer is not None:
                    self._observer(session)

    def _publish_ended(self, session: CallSession, status: str) -> None:
        """call.ended for calls straight on Converse. The bridge reports the same end under the same
        stable event id, so a bridged call still gets one call.ended."""
        start = session.start
        ended = events_pb2.CallEnded(
            end_reason=(session.end_reason or "caller_hangup") if status == "completed" else "error",
            direction=start.direction,
            agent_id=start.agent_id,
            from_number=start.caller_number,
            to_number=start.called_number,
        )
        ended.duration.FromNanoseconds(int(session.duration_s * 1e9))
        event_id = call_event_id(start.tenant_id, start.call_id, "call.ended")
        source = getattr(self._events, "source", "agent")
        self._events.publish(
            new_event(start.tenant_id, start.call_id, source, event_id=event_id, call_ended=ended)
        )


def build_server(
    settings: Settings,
    directory: AgentDirectory | None = None,
    *,
    providers: ProviderFactory | None = None,
    observer: SessionObserver | None = None,
    publish_events: bool = True,
) -> GrpcServer:
    providers = providers or ProviderFactory.from_settings(
        settings.agent_service, ProviderSecrets.from_settings(settings), outbound=settings.outbound_http
    )
    server = GrpcServer("agent", settings.agent_service, [])
    metrics = AgentMetrics.create(server.registry)
    providers.attach_metrics(metrics)
    # The built-in demo agent answers without a database; every other agent comes from the control plane.
    directory = directory or LayeredDirectory(
        StaticDirectory([demo_agent()]), ControlPlaneDirectory(settings)
    )
    events: CallEventSink = NullEventSink()
    if publish_events:
        sink = EventPublisher(
            settings, f"agent-{settings.instance_id or os.getpid()}", registry=server.registry
        )
        server.on_stop.append(sink.close)
        events = sink
    # Reads RECORDING_MASTER_KEY now: outside development/test the agent does not start without it.
    recordings = RecordingWriter(settings)
    load = LoadMonitor(settings.agent_service.capacity, server.registry)
    load.listeners.append(lambda saturated: server.set_serving(not saturated))
    server.on_start.append(load.start)
    server.on_stop.append(load.stop)
    servicer = AgentSessionServicer(
        settings,
        directory=directory,
        providers=providers,
        metrics=metrics,
        observer=observer,
        events=events,
        recordings=recordings,
        load=load,
    )
    server.on_stop.append(servicer.admission.close)
    server.on_stop.append(recordings.close)
    server.bindings = (bind(agent_session_pb2, agent_session_pb2_grpc, "AgentSessionService", servicer),)
    return server
