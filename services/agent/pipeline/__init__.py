"""The conversation pipeline: small processors (endpointing, chunking, normalization, playout, history)
composed per call by `session.CallSession`."""
