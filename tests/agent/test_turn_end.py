"""The audio end-of-turn model (Smart Turn v3.2 from the pipecat-ai wheel) and the turn-end policies."""

from __future__ import annotations

import numpy as np
import pytest

import audio_core
from services.agent.demo_agent import demo_agent
from services.agent.pipeline.turn_end import FixedGrace, ModelTurnEnd, turn_end_policy
from services.agent.ports import VoiceSelection
from services.agent.profile import build_profile
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.providers.turn.features import LogMel
from services.agent.providers.turn.smart_turn import SmartTurn, bundled_model_path
from services.shared.settings import Settings


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    return SmartTurn()


async def speech(tts: TritonTextToSpeech, text: str, voice: str = "default_male_1") -> bytes:
    resampler = audio_core.Resampler(tts.sample_rate, 16000)
    pcm = b"".join([resampler.process(c) async for c in tts.synthesize(text, VoiceSelection(voice))])
    return pcm + resampler.flush() + b"\x00" * 6400  # and the 200 ms of silence that ended it


def test_model_ships_in_the_installed_wheel() -> None:
    path = bundled_model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 8_000_000


def test_features_have_the_models_shape() -> None:
    audio = np.random.default_rng(1).standard_normal(16000 * 8).astype(np.float32) * 0.1
    features = LogMel()(audio)
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert float(features.min()) > -1.5 and float(features.max()) <= 1.5


async def test_a_question_is_complete_and_a_trailing_off_phrase_is_not(
    smart_turn: SmartTurn, caller_tts: TritonTextToSpeech
) -> None:
    # Measured on espeak-ng voices, whose flat synthetic prosody the model was not trained on: complete
    # questions score 0.95-0.99 in both voices; "I would like to" 0.09-0.18 in the male voice but up to
    # 0.87 in the female one, and every separately synthesised digit group sounds final. So the words
    # guard the turn too (ModelTurnEnd: an unfinished ending keeps it open whatever the model says).
    for voice in ("default_male_1", "default_female_1"):
        done = await smart_turn.complete_probability(
            await speech(caller_tts, "What are your opening hours on Saturday?", voice)
        )
        assert done > 0.9, (voice, done)
    pausing = await smart_turn.complete_probability(await speech(caller_tts, "I would like to"))
    assert pausing < 0.5, pausing


async def test_policies_wait_through_unfinished_turns_and_answer_finished_ones_at_once(
    smart_turn: SmartTurn, caller_tts: TritonTextToSpeech, settings: Settings
) -> None:
    tt = build_profile(demo_agent(), settings.agent_service).turn_taking
    model = turn_end_policy(smart_turn, tt)
    assert isinstance(model, ModelTurnEnd) and model.silence_ms == 200
    question = await speech(caller_tts, "What are your opening hours on Saturday?")
    answered = await model.decide(question, "what are your opening hours on saturday")
    assert answered.wait_s == 0.0 and answered.model_ms is not None
    trailing = await speech(caller_tts, "I would like to")
    assert (await model.decide(trailing, "i would like")).wait_s >= 1.2  # the model alone keeps it open
    # Words that end like a number keep the turn open even when the audio sounds finished.
    assert (await model.decide(question, "my number is five five")).wait_s >= 1.2
    fixed = turn_end_policy(None, tt)
    assert isinstance(fixed, FixedGrace) and fixed.silence_ms == tt.min_silence_ms
    assert (await fixed.decide(question, "hello")).wait_s == tt.grace_ms / 1000
