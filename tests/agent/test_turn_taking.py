"""Endpointing, history and playout: the sans-IO parts of turn-taking."""

from __future__ import annotations

import asyncio

from services.agent.pipeline.endpointing import (
    Endpointer,
    SpeechEnded,
    SpeechEvent,
    SpeechStarted,
    sounds_unfinished,
)
from services.agent.pipeline.history import Conversation
from services.agent.pipeline.interruptions import final_interrupts, interrupts_while_speaking, reoffer
from services.agent.pipeline.pausing import BargeInPause
from services.agent.pipeline.playout import Playout, Segment, words_heard
from services.agent.ports import ToolUse

WINDOW = 0.032


def feed(endpointer: Endpointer, probabilities: list[float]) -> list[tuple[int, SpeechEvent]]:
    events: list[tuple[int, SpeechEvent]] = []
    for i, p in enumerate(probabilities):
        event = endpointer.update(p, i * WINDOW, WINDOW)
        if event is not None:
            events.append((i, event))
    return events


def test_speech_needs_min_duration_and_reports_true_start_and_end() -> None:
    ep = Endpointer(threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    events = feed(ep, [0.1] * 5 + [0.9] * 20 + [0.05] * 15)
    (i_start, start), (i_end, end) = events
    assert isinstance(start, SpeechStarted) and abs(start.at - 5 * WINDOW) < 1e-9
    assert i_start == 5 + 7  # confirmed after 8 windows (256 ms), not before
    assert isinstance(end, SpeechEnded) and abs(end.at - 25 * WINDOW) < 1e-9
    assert i_end >= 25 + 9  # only after 300 ms of silence


def test_a_cough_is_not_speech() -> None:
    ep = Endpointer(threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    assert feed(ep, [0.1] * 5 + [0.95] * 4 + [0.1] * 30) == []


def test_short_dips_inside_speech_do_not_end_it() -> None:
    ep = Endpointer(threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    events = feed(ep, [0.9] * 10 + [0.2] * 5 + [0.9] * 10 + [0.0] * 12)
    assert [type(e).__name__ for _, e in events] == ["SpeechStarted", "SpeechEnded"]


def test_unfinished_numbers_and_spelling_get_more_time() -> None:
    assert sounds_unfinished("my number is five five five")
    assert sounds_unfinished("it's s m i")
    assert sounds_unfinished("my number is")
    assert not sounds_unfinished("what are your opening hours")


def test_history_keeps_alternation_and_summarizes_old_turns() -> None:
    conv = Conversation(max_history_tokens=8000, summarize_after_turns=4)
    conv.add_caller("Hello there.")
    conv.add_caller("I have a question.")  # a second caller final merges into the same turn
    assert [m.role for m in conv.messages] == ["user"]
    for i in range(4):
        conv.add_agent(f"Answer {i}. More detail.")
        conv.add_caller(f"Question {i}?")
    assert len(conv.messages) <= 4
    assert conv.messages[0].role == "user"
    assert "Earlier in this call" in conv.summary_text() and "Answer 0." in conv.summary_text()


def test_history_is_cut_to_the_token_budget() -> None:
    conv = Conversation(max_history_tokens=300, summarize_after_turns=100)
    for i in range(20):
        conv.add_caller(f"question {i} " + "x" * 100)
        conv.add_agent(f"answer {i} " + "y" * 100)
    assert conv.tokens() <= 300


def test_barge_in_keeps_only_what_was_heard() -> None:
    conv = Conversation(max_history_tokens=8000, summarize_after_turns=20)
    conv.add_caller("Hours?")
    said = conv.add_agent("We are open Monday to Friday from eight to six.")
    conv.replace_or_add_agent(said, "We are open Monday")
    assert conv.messages[-1].text == "We are open Monday"
    use = ToolUse("t1", "lookup", {})
    with_tool = conv.add_agent("", (use,))
    conv.replace_or_add_agent(with_tool, "")
    assert conv.messages[-1].tool_uses == (use,)  # a tool use that ran stays, even if unheard


def test_words_heard_is_proportional_to_audio_played() -> None:
    text = "We are open Monday to Friday"
    assert words_heard(text, 0.0) == ""
    assert words_heard(text, 1.0) == text
    assert words_heard(text, 0.5) in ("We are open", "We are open Monday")


async def test_playout_paces_continuous_frames_and_reports_what_was_heard() -> None:
    sent: list[tuple[int, int, int]] = []
    done: list[str] = []

    async def send(frame: bytes, seq: int, ts: int, segment: Segment) -> None:
        sent.append((seq, ts, len(frame)))

    first_done = asyncio.Event()

    def segment_done(segment: Segment) -> None:
        done.append(segment.text)
        first_done.set()

    playout = Playout(24000, 20, send, segment_done)
    runner = asyncio.create_task(playout.run())
    first = playout.begin("One two.", reply_id=1)
    playout.append(first, b"\x01\x00" * 2400)  # 100 ms
    playout.finish(first)
    second = playout.begin("Three four five six.", reply_id=1)
    playout.append(second, b"\x01\x00" * 480 * 10)  # 200 ms, more still coming
    await first_done.wait()  # the first sentence has played out completely
    report = playout.clear()
    runner.cancel()
    assert done == ["One two."]
    assert [s for s, _, _ in sent] == list(range(len(sent)))
    assert all(ts == 480 * i for i, (_, ts, _) in enumerate(sent))
    assert all(size == 960 for _, _, size in sent)
    assert report.last_sequence_number == sent[-1][0]
    assert report.unheard_text.endswith("six.")
    # A re-offer restarts the interrupted sentence, not the middle of it.
    assert report.resume_text == "Three four five six."
    assert not playout.active


def test_barge_in_evidence_excludes_the_vads_hangover() -> None:
    ep = Endpointer(threshold=0.5, min_speech_ms=100, min_silence_ms=300)
    feed(ep, [0.9] * 5 + [0.1] * 8)  # 160 ms of "mm-hm", then 256 ms of silence: still "in speech"
    assert ep.in_speech
    assert abs(ep.voiced_duration() - 5 * WINDOW) < 1e-9
    assert ep.speech_duration(13 * WINDOW) > 0.4  # what the 400 ms minimum used to count


def test_interruption_evidence() -> None:
    # While the agent talks: backchannels and one or two odd words under 0.8 s are not interruptions.
    assert not interrupts_while_speaking(["okay"], 0.6, 400)
    assert not interrupts_while_speaking(["are"], 0.5, 400)
    assert not interrupts_while_speaking(["book", "you"], 0.6, 400)
    assert not interrupts_while_speaking(["stop"], 0.2, 400)  # too short to count yet
    assert interrupts_while_speaking(["stop"], 0.45, 400)
    assert interrupts_while_speaking(["can", "i", "speak"], 0.5, 400)
    assert interrupts_while_speaking([], 0.9, 400)  # long speech the recogniser has not caught up with
    # On the final transcript of a short utterance.
    assert not final_interrupts("uh huh", 0.9)
    assert not final_interrupts("are", 0.9)
    assert not final_interrupts("book you", 0.3)
    assert final_interrupts("no", 0.8)
    assert final_interrupts("where is the clinic", 0.7)


def test_a_reoffer_restarts_the_sentence() -> None:
    assert reoffer("We are open Monday to Friday.") == "As I was saying, we are open Monday to Friday."
    assert reoffer("Doctor Smith can see you.") == "As I was saying, Doctor Smith can see you."
    assert reoffer("I'm sorry.") == "As I was saying, I'm sorry."


async def test_playout_pause_holds_every_frame_and_resume_goes_on_from_there() -> None:
    sent: list[tuple[int, bytes]] = []
    got_some = asyncio.Event()
    done = asyncio.Event()

    async def send(frame: bytes, seq: int, ts: int, segment: Segment) -> None:
        sent.append((seq, frame))
        if len(sent) == 3:
            got_some.set()
        if len(sent) == 10:
            done.set()

    playout = Playout(16000, 20, send)
    runner = asyncio.create_task(playout.run())
    segment = playout.begin("We are open.", reply_id=1)
    frames = [bytes([i]) * 640 for i in range(1, 11)]  # ten distinct 20 ms frames
    playout.append(segment, b"".join(frames))
    playout.finish(segment)
    await got_some.wait()
    playout.pause()
    paused_at = len(sent)
    await asyncio.sleep(0.1)  # five frames' time: none may go out while paused
    assert len(sent) == paused_at and playout.paused and playout.active
    playout.resume()
    await done.wait()
    runner.cancel()
    # Every frame exactly once, in order, with consecutive sequence numbers: nothing dropped or repeated.
    assert [frame for _, frame in sent] == frames
    assert [seq for seq, _ in sent] == list(range(10))


def test_pause_evidence_comes_before_the_vad_confirms_speech() -> None:
    ep = Endpointer(threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    feed(ep, [0.1] * 3 + [0.9] * 5)  # 160 ms voiced: not yet speech, but already evidence to pause on
    assert not ep.in_speech and ep.onset_at is not None and abs(ep.onset_at - 3 * WINDOW) < 1e-9
    assert abs(ep.onset_voiced() - 5 * WINDOW) < 1e-9
    for i in range(8, 16):  # it died out: a blip, nothing left to pause for
        ep.update(0.0, i * WINDOW, WINDOW)
    assert ep.onset_at is None and ep.onset_voiced() == 0.0


async def test_a_voiced_blip_pauses_the_agent_and_gives_it_back() -> None:
    async def send(frame: bytes, seq: int, ts: int, segment: Segment) -> None:
        return None

    ep = Endpointer(threshold=0.5, min_speech_ms=250, min_silence_ms=300)
    playout = Playout(16000, 20, send)
    pause = BargeInPause(playout, ep, pause_ms=160)
    for i, p in enumerate([0.1] * 3 + [0.9] * 5):
        ep.update(p, i * WINDOW, WINDOW)
        pause.check(agent_audible=True, now=(i + 1) * WINDOW)
        assert pause.active == (i == 7)  # the fifth voiced window (160 ms), not before
    assert playout.paused and pause.pauses == [(3 * WINDOW, 8 * WINDOW)]
    for i in range(8, 16):
        ep.update(0.0, i * WINDOW, WINDOW)
    assert pause.blip_over() and pause.resume("noise")
    assert not playout.paused and not pause.active
    pause.check(agent_audible=False, now=1.0)  # nothing to pause while the agent is silent
    assert not pause.active
