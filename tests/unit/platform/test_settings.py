"""Settings: init arguments over environment over the TOML file over defaults; defaults match the local stack."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("ORDERLY_POSTGRES__DATABASE", 'x"; DROP DATABASE orderly; --', "postgres.database"),
        ("ORDERLY_MYSQL__DATABASE", "a`b", "mysql.database"),
        ("ORDERLY_CLICKHOUSE__DATABASE", "db.other", "clickhouse.database"),
        ("ORDERLY_REDIS__KEY_PREFIX", "a b*", "redis.key_prefix"),
        ("ORDERLY_NATS__STREAM_PREFIX", "A.>", "nats.stream_prefix"),
        ("ORDERLY_KAFKA__TOPIC_PREFIX", "t/x", "kafka.topic_prefix"),
        ("ORDERLY_RABBITMQ__VHOST", "v h", "rabbitmq.vhost"),
    ],
)
def test_names_that_reach_sql_keys_or_topics_must_match_their_pattern(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        InfraSettings()


def test_the_test_runs_namespaces_and_the_defaults_pass_the_name_patterns() -> None:
    InfraSettings(
        postgres={"database": "t_ab12cd_e2e-logs"},  # type: ignore[arg-type]
        redis={"key_prefix": "t:ab12cd:e2e-logs:"},  # type: ignore[arg-type]
        nats={"stream_prefix": "Tab12cd_e2e-logs_"},  # type: ignore[arg-type]
        kafka={"topic_prefix": "t.ab12cd.e2e-logs."},  # type: ignore[arg-type]
        rabbitmq={"vhost": "t_ab12cd_e2e-logs"},  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["ingest", "worker", "--batch-size", "0"], "ingest.batch_size"),
        (["ingest", "worker", "--max-wait-ms", "-1"], "ingest.max_wait_ms"),
        (["notifier", "--max-attempts", "0"], "notifier.max_attempts"),
        (["loms", "relay", "--batch-size", "0"], "loms.batch_size"),
        (["items", "api", "--port", "0"], "http.port"),
    ],
)
def test_a_bad_command_line_flag_exits_2_naming_the_field(args: list[str], field: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orderly", *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert f"invalid setting {field}:" in done.stderr
