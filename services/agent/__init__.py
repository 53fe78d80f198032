"""Agent service: the real-time conversation engine (VAD -> STT -> LLM -> TTS) behind AgentSessionService."""
