"""Typed settings: one model per resource, composed by each process's settings class.

Every process reads ``ORDERLY_*`` environment variables (nested with ``__``, e.g. ``ORDERLY_POSTGRES__PORT``) over
an optional TOML file (``ORDERLY_CONFIG``, default ``orderly.toml`` in the working directory) over the defaults.
The defaults point at the local stack, so ``orderly stack up`` and the services agree without any configuration.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar
from urllib.parse import quote as _quote

from pydantic import BaseModel, Field, SecretStr, StringConstraints
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

LOOPBACK = "127.0.0.1"

# Names from configuration that end up inside SQL, key names, subjects or topic names: checked here, before any of
# them reaches a statement (identifiers cannot be bound as parameters, so a pattern is the guard).
# Database names are always quoted in statements ("…" or `…`), so a hyphen is safe; quotes, dots and spaces are not.
DatabaseName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")]
RedisKeyPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:.-]{0,64}$")]
StreamPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{0,32}$")]
TopicPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{0,100}$")]
VirtualHost = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_/.-]{1,64}$")]
S = TypeVar("S", bound="OrderlySettings")


def quote(part: str) -> str:
    """Percent-encode one URL component (user, password, vhost): nothing is safe, not even "/"."""
    return _quote(part, safe="")


class PostgresSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="PostgreSQL host")
    port: int = Field(default=25432, ge=1, le=65535, description="PostgreSQL port")
    user: str = Field(default="postgres", description="PostgreSQL user")
    password: SecretStr = Field(default=SecretStr(""), description="PostgreSQL password")
    database: DatabaseName = Field(default="orderly", description="database of the service (letters, digits, _ -)")
    pool_min: int = Field(default=1, ge=0, description="connections kept open per process")
    pool_max: int = Field(default=10, ge=1, description="most connections per process")

    def dsn(self, database: str | None = None) -> str:
        auth = quote(self.user)
        if secret := self.password.get_secret_value():
            auth += ":" + quote(secret)
        return f"postgresql://{auth}@{self.host}:{self.port}/{database or self.database}"


class MySQLSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="MySQL/MariaDB host")
    port: int = Field(default=23306, ge=1, le=65535, description="MySQL/MariaDB port")
    user: str = Field(default="root", description="MySQL user")
    password: SecretStr = Field(default=SecretStr(""), description="MySQL password")
    database: DatabaseName = Field(default="orderly", description="database of the service (letters, digits, _ -)")
    pool_min: int = Field(default=1, ge=0, description="connections kept open per process")
    pool_max: int = Field(default=10, ge=1, description="most connections per process")


class RedisSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="Redis host")
    port: int = Field(default=26379, ge=1, le=65535, description="Redis port")
    db: int = Field(default=0, ge=0, le=15, description="Redis logical database")
    password: SecretStr = Field(default=SecretStr(""), description="Redis password")
    key_prefix: RedisKeyPrefix = Field(
        default="orderly:", description="prefix of every key the services write (letters, digits, _ : . -)"
    )

    def url(self) -> str:
        secret = self.password.get_secret_value()
        auth = f":{quote(secret)}@" if secret else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


class RabbitMQSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="RabbitMQ host")
    port: int = Field(default=15682, ge=1, le=65535, description="AMQP port")
    management_port: int = Field(default=15683, ge=1, le=65535, description="management HTTP API port")
    distribution_port: int = Field(
        default=15684, ge=1, le=65535, description="Erlang distribution port (local stack only; CLI tools use +1…+11)"
    )
    epmd_port: int = Field(default=14369, ge=1, le=65535, description="epmd port (local stack only)")
    stomp_port: int = Field(default=16613, ge=1, le=65535, description="STOMP port (the broker's STOMP plugin)")
    user: str = Field(default="guest", description="RabbitMQ user")
    password: SecretStr = Field(default=SecretStr("guest"), description="RabbitMQ password")
    vhost: VirtualHost = Field(default="/", description="RabbitMQ virtual host (letters, digits, _ / . -)")

    def url(self) -> str:
        secret = quote(self.password.get_secret_value())
        return f"amqp://{quote(self.user)}:{secret}@{self.host}:{self.port}/{quote(self.vhost)}"


class NatsSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="NATS host")
    port: int = Field(default=24222, ge=1, le=65535, description="NATS client port")
    monitor_port: int = Field(default=28222, ge=1, le=65535, description="NATS monitoring port")
    stream_prefix: StreamPrefix = Field(
        default="", description="prefix of every JetStream stream name (letters, digits, _ -)"
    )

    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def address(self) -> str:
        """host:port, for log lines (nats-py's connect errors do not say where they tried)."""
        return f"{self.host}:{self.port}"


class ClickHouseSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="ClickHouse host")
    port: int = Field(default=29000, ge=1, le=65535, description="native protocol port")
    http_port: int = Field(default=28123, ge=1, le=65535, description="HTTP port")
    user: str = Field(default="default", description="ClickHouse user")
    password: SecretStr = Field(default=SecretStr(""), description="ClickHouse password")
    database: DatabaseName = Field(default="orderly", description="database of the change log (letters, digits, _ -)")


class KafkaSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="Kafka bootstrap host")
    port: int = Field(default=29092, ge=1, le=65535, description="Kafka bootstrap port")
    controller_port: int = Field(default=29093, ge=1, le=65535, description="KRaft controller port (local stack only)")
    topic_prefix: TopicPrefix = Field(
        default="", description="prefix of every topic and consumer group name (letters, digits, . _ -)"
    )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


class PrometheusSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="Prometheus host")
    port: int = Field(default=29090, ge=1, le=65535, description="Prometheus HTTP port (UI and API)")

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


DEFAULT_MAX_BODY_BYTES = 64 * 1024


class HttpSettings(BaseModel):
    host: str = Field(default=LOOPBACK, description="address an API binds")
    port: int = Field(default=8000, ge=1, le=65535, description="port an API binds (each service has its own default)")
    workers: int = Field(default=1, ge=1, le=64, description="HTTP worker processes")
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        le=16 * 1024 * 1024,
        description="largest request body an API takes; a larger one gets 413 before it is read (chunked: as soon as"
        " it passes the cap)",
    )


def default_instance() -> str:
    """A process's name when none is given: host and PID (``orderly up`` names each process)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ProbeSettings(BaseModel):
    """Where a background process (worker, relay, consumer, daemon) serves /healthz, /readyz and /metrics."""

    host: str = Field(default=LOOPBACK, description="address the probe server of a background process binds")
    port: int = Field(default=0, ge=0, le=65535, description="its port (`--health-port`); 0 serves no probes")
    instance: str = Field(
        default_factory=default_instance, description="the process's name in `orderly_active{instance}`"
    )


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    format: Literal["json", "text"] = Field(default="json", description="json (one object per line on stderr) or text")


def config_file() -> Path:
    """The TOML file read under the environment: ``ORDERLY_CONFIG`` or ``./orderly.toml``."""
    return Path(os.environ.get("ORDERLY_CONFIG", "orderly.toml"))


class OrderlySettings(BaseSettings):
    """Base of every process's settings: init arguments over env over the TOML file over defaults."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix="ORDERLY_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)


def with_flags(settings: S, section: str, **flags: object) -> S:
    """``settings`` with the command-line flags that were given (not None) put into ``section``, all validated again.

    Flags win over env and file, and they pass the same checks: a bad one raises ``ValidationError`` naming
    ``section.field`` (the command line answers it with exit code 2).
    """
    changes = {k: v for k, v in flags.items() if v is not None}
    if not changes:
        return settings
    current: BaseModel = getattr(settings, section)
    data = settings.model_dump() | {section: current.model_dump() | changes}
    return type(settings).model_validate(data)


class InfraSettings(OrderlySettings):
    """Every resource at once: what the local stack serves and what the test fixtures connect to."""

    postgres: PostgresSettings = PostgresSettings()
    mysql: MySQLSettings = MySQLSettings()
    redis: RedisSettings = RedisSettings()
    rabbitmq: RabbitMQSettings = RabbitMQSettings()
    nats: NatsSettings = NatsSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    kafka: KafkaSettings = KafkaSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
