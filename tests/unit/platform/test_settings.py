"""Settings: init arguments over environment over the TOML file over defaults; defaults match the local stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orderly.platform.settings import InfraSettings, PostgresSettings, RabbitMQSettings


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = InfraSettings()
    assert settings.postgres.dsn() == "postgresql://postgres@127.0.0.1:25432/orderly"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:29092"


def test_environment_wins_over_file_and_file_over_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "orderly.toml"
    config.write_text('[postgres]\nport = 1111\ndatabase = "from_file"\n[redis]\nkey_prefix = "file:"\n')
    monkeypatch.setenv("ORDERLY_CONFIG", str(config))
    monkeypatch.setenv("ORDERLY_POSTGRES__PORT", "2222")
    settings = InfraSettings()
    assert settings.postgres.port == 2222
    assert settings.postgres.database == "from_file"
    assert settings.redis.key_prefix == "file:"
    assert settings.mysql.port == 23306


def test_a_bad_value_fails_fast_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLY_POSTGRES__PORT", "not-a-port")
    with pytest.raises(ValidationError, match=r"postgres\.port"):
        InfraSettings()


def test_secrets_are_escaped_in_urls_and_hidden_in_reprs() -> None:
    pg = PostgresSettings(password="p@ss/word")  # type: ignore[arg-type]
    assert pg.dsn().startswith("postgresql://postgres:p%40ss%2Fword@")
    assert "p@ss" not in repr(pg)
    assert RabbitMQSettings(vhost="/").url().endswith("/%2F")
