"""Voice activity detection: Silero (ONNX, shared model session) and an energy VAD fallback."""
