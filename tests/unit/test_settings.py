from __future__ import annotations

import pytest

from services.shared.settings import SettingsError, env_var_name, load_settings


def test_defaults_reach_local_services_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = load_settings(_env_file=None)
    assert "127.0.0.1:15432" in settings.database_url
    assert settings.redis_url.startswith("redis://127.0.0.1:")
    assert settings.agent_service.vad.threshold == 0.5
    assert settings.agent_service.conversation.max_history_tokens == 8000
    assert settings.api_gateway.rate_limiting.default_limit == 100
    assert settings.chatterbox_service.chunk_duration_ms == 100


def test_nested_sections_come_from_double_underscore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SERVICE__LLM__TEMPERATURE", "0.2")
    monkeypatch.setenv("API_GATEWAY__CORS__ALLOWED_ORIGINS", '["http://localhost:3000"]')
    settings = load_settings(_env_file=None)
    assert settings.agent_service.llm.temperature == 0.2
    assert settings.api_gateway.cors.allowed_origins == ["http://localhost:3000"]


def test_validation_errors_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SERVICE__LLM__TEMPERATURE", "7")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "many")
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    message = str(err.value)
    assert "AGENT_SERVICE__LLM__TEMPERATURE" in message
    assert "DATABASE_POOL_SIZE" in message


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    settings = load_settings(_env_file=None)
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-very-secret"
    assert "very-secret" not in repr(settings)


def test_secrets_have_no_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEEPGRAM_API_KEY", "ANTHROPIC_API_KEY", "JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.deepgram_api_key is None
    assert settings.anthropic_api_key is None
    assert settings.jwt_secret is None


def test_env_var_name_for_nested_location() -> None:
    assert env_var_name(("agent_service", "vad", "threshold")) == "AGENT_SERVICE__VAD__THRESHOLD"
