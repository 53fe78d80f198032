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
