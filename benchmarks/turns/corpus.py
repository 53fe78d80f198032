"""A fixed corpus of caller sentences that are NOT the demo agent's phrases (held out from the
recogniser's language model and the policy's intents), for recognition and policy measurements."""

from __future__ import annotations

HELDOUT_SENTENCES = (
    "What's your address?",
    "Is the doctor in on Friday?",
    "I need to cancel my appointment.",
    "How much is a consultation?",
    "Where can I park my car?",
    "Do you have anything on Thursday morning?",
    "Can I bring my son with me?",
    "Could you tell me when you close today?",
    "I would like to speak with a nurse please.",
    "Okay bye for now, actually wait one more question.",
    "Yes please, that works for me.",
    "No thanks, that's all.",
)

VOICES = ("default_male_1", "default_female_1")

# Dictation read in groups ("|" = a pause of PAUSES_S): one turn each, never answered early.
DICTATIONS = (
    "My number is | five five five | one two three | four five six seven",
    "My name is Smith | S M | I T H",
)
PAUSES_S = (0.3, 0.7, 1.2)

# Said while the agent talks: listening, not interrupting.
BACKCHANNELS = ("Okay.", "Uh huh.", "Yeah.", "Right.")

# Said while the agent talks: real interruptions.
INTERRUPTIONS = ("Can I speak to someone at reception please?", "Sorry, where is the clinic?")

# Plain questions for end-to-end latency at the caller.
QUESTIONS = (
    "What are your opening hours?",
    "How much does a consultation cost?",
    "Where is the clinic?",
)
