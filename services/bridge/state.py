"""The call state machine of spec 3.2.5 as one explicit transition table.

    INITIAL -> RINGING (inbound) | DIALING (outbound)
    RINGING -> CONNECTED (answer);  DIALING -> CONNECTED (connect)
    CONNECTED -> CONVERSING (agent joined)
    CONVERSING -> ON_HOLD | TRANSFERRING | ERROR, and each of those back to CONVERSING
    any state except ENDED -> ENDED (hangup, timeout, error, transfer to a human)

A transition not in the table is refused: `IllegalTransition` is raised, logged and counted by the
caller (`CallStateMachine.transition` does both), and the state is left unchanged.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class CallState(enum.StrEnum):
    INITIAL = "initial"
    RINGING = "ringing"
    DIALING = "dialing"
    CONNECTED = "connected"
    CONVERSING = "conversing"
    ON_HOLD = "on_hold"
    TRANSFERRING = "transferring"
    ERROR = "error"
    ENDED = "ended"


S = CallState
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    S.INITIAL: frozenset({S.RINGING, S.DIALING, S.ENDED}),
    S.RINGING: frozenset({S.CONNECTED, S.ENDED}),
    S.DIALING: frozenset({S.CONNECTED, S.ENDED}),
    S.CONNECTED: frozenset({S.CONVERSING, S.ENDED}),
    S.CONVERSING: frozenset({S.ON_HOLD, S.TRANSFERRING, S.ERROR, S.ENDED}),
    S.ON_HOLD: frozenset({S.CONVERSING, S.ENDED}),
    S.TRANSFERRING: frozenset({S.CONVERSING, S.ENDED}),
    S.ERROR: frozenset({S.CONVERSING, S.ENDED}),
    S.ENDED: frozenset(),
}

# The public call status (voice.v1.CallStatus names, lower case) each state is reported as.
PUBLIC_STATUS: dict[CallState, str] = {
    S.INITIAL: "initiating",
    S.RINGING: "ringing",
    S.DIALING: "ringing",
    S.CONNECTED: "connected",
    S.CONVERSING: "connected",
    S.ON_HOLD: "on_hold",
    S.TRANSFERRING: "transferring",
    S.ERROR: "connected",
    S.ENDED: "completed",
}


class IllegalTransition(RuntimeError):
    def __init__(self, call_id: str, current: CallState, wanted: CallState) -> None:
        super().__init__(f"call {call_id}: {current.value} -> {wanted.value} is not a legal transition")
        self.current = current
        self.wanted = wanted


def allowed(current: CallState, wanted: CallState) -> bool:
    return wanted in TRANSITIONS[current]


class CallStateMachine:
    """The state of one call. `on_illegal` counts refused transitions (a Prometheus counter's inc)."""

    def __init__(self, call_id: str, on_illegal: Callable[[CallState, CallState], None]) -> None:
        self.call_id = call_id
        self.state = CallState.INITIAL
        self._on_illegal = on_illegal

    def can(self, wanted: CallState) -> bool:
        return allowed(self.state, wanted)

    def transition(self, wanted: CallState) -> CallState:
        """Moves to `wanted` and returns the previous state; IllegalTransition (logged and counted)
        when the table does not allow it."""
        if not allowed(self.state, wanted):
            err = IllegalTransition(self.call_id, self.state, wanted)
            log.error(str(err), extra={"data": {"call_id": self.call_id}})
            self._on_illegal(self.state, wanted)
            raise err
        previous, self.state = self.state, wanted
        return previous
