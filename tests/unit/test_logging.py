from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from services.shared.logging import JsonFormatter, configure_logging, log_context


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("agent-service", "agent-service-abc123"))
    logger = logging.getLogger("test.logging")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_spec_fields(captured: io.StringIO) -> None:
    with log_context(trace_id="trace-xyz789", tenant_id="tenant_123", call_id="call_456"):
        logging.getLogger("test.logging").info(
            "LLM response generated", extra={"data": {"model": "claude-sonnet", "tokens": 150}}
        )
    (entry,) = lines(captured)
    assert entry["level"] == "INFO"
    assert entry["service"] == "agent-service"
    assert entry["instance"] == "agent-service-abc123"
    assert entry["trace_id"] == "trace-xyz789"
    assert isinstance(entry["span_id"], str) and entry["span_id"]
    assert entry["tenant_id"] == "tenant_123"
    assert entry["call_id"] == "call_456"
    assert entry["message"] == "LLM response generated"
    assert entry["data"] == {"model": "claude-sonnet", "tokens": 150}
    assert str(entry["timestamp"]).endswith("Z")


def test_context_is_per_task(captured: io.StringIO) -> None:
    log = logging.getLogger("test.logging")

    async def call(call_id: str) -> None:
        with log_context(call_id=call_id, tenant_id="t1"):
            await asyncio.sleep(0)
            log.info("turn")

    async def both() -> None:
        await asyncio.gather(call("a"), call("b"))

    asyncio.run(both())
    assert sorted(str(e["call_id"]) for e in lines(captured)) == ["a", "b"]


def test_fields_absent_outside_a_context(captured: io.StringIO) -> None:
    logging.getLogger("test.logging").warning("no call")
    (entry,) = lines(captured)
    assert "call_id" not in entry
    assert "tenant_id" not in entry


def test_exceptions_are_logged_as_one_line(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("test.logging").exception("failed")
    (entry,) = lines(captured)
    assert "ValueError: boom" in str(entry["error"])


def test_configure_logging_replaces_root_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("worker", level="DEBUG", fmt="json", instance="w-1")
        configure_logging("worker", level="DEBUG", fmt="json", instance="w-1")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
