"""Connection factories, each an async context manager that closes what it opened.

Only composition roots and test fixtures call these; services receive the opened resources as arguments.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

# Client libraries are imported where they are used: together they cost ~45 MB of RSS, and a process needs one or two.
if TYPE_CHECKING:
    import aio_pika
    import asyncpg
    import redis.asyncio as aioredis
    from clickhouse_driver import Client as ClickHouseClient
    from nats.aio.client import Client as NatsClient

from orderly.platform.errors import DependencyUnavailableError, Transient, classify
from orderly.platform.logging import RepeatFilter
from orderly.platform.settings import (
    ClickHouseSettings,
    KafkaSettings,
    MySQLSettings,
    NatsSettings,
    PostgresSettings,
    RabbitMQSettings,
    RedisSettings,
)

log = logging.getLogger(__name__)


def _lazy_after(exc: Exception, dependency: str) -> bool:
    """Whether a pool that could not open its first connections should start empty instead (a transient fault: the
    server is away or restarting). Requests then get 503 until it is back, rather than the process failing to start;
    a permanent fault (database missing, credentials refused) still stops it."""
    if not isinstance(classify(exc, dependency=dependency), Transient):
        return False
    log.warning("%s unavailable at start: %s; the pool connects on first use", dependency, " ".join(str(exc).split()))
    return True


@asynccontextmanager
async def postgres_pool(settings: PostgresSettings, **kwargs: Any) -> AsyncIterator[asyncpg.Pool]:
    import asyncpg

    try:
        pool = await asyncpg.create_pool(
            settings.dsn(), min_size=settings.pool_min, max_size=settings.pool_max, **kwargs
        )
    except Exception as exc:
        if not _lazy_after(exc, "postgres"):
            raise
        pool = await asyncpg.create_pool(settings.dsn(), min_size=0, max_size=settings.pool_max, **kwargs)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def mysql_pool(settings: MySQLSettings, **kwargs: Any) -> AsyncIterator[Any]:
    import asyncmy

    def create(minsize: int) -> Any:
        return asyncmy.create_pool(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password.get_secret_value(),
            db=settings.database,
            minsize=minsize,
            maxsize=settings.pool_max,
            autocommit=False,
            **kwargs,
        )

    try:
        pool = await create(settings.pool_min)
    except Exception as exc:
        if not _lazy_after(exc, "mysql"):
            raise
        pool = await create(0)
    try:
        yield pool
    finally:
        pool.close()
        await pool.wait_closed()


@asynccontextmanager
async def redis_client(settings: RedisSettings, **kwargs: Any) -> AsyncIterator[aioredis.Redis]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.url(), **kwargs)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def rabbitmq_connection(
    settings: RabbitMQSettings, **kwargs: Any
) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    import aio_pika

    connection = await aio_pika.connect_robust(settings.url(), **kwargs)
    try:
        yield connection
    finally:
        await connection.close()


async def quiet_nats_callback(*_args: object) -> None:
    """For nats-py's ``error_cb`` and ``disconnected_cb``: its defaults log every failed connect with a traceback.
    The caller says it once instead: its ``Retry`` logs the outage, a one-shot step exits with one line."""


@asynccontextmanager
async def nats_connection(settings: NatsSettings, **kwargs: Any) -> AsyncIterator[NatsClient]:
    """A NATS client until the block ends. A first connect that finds no server raises DependencyUnavailableError
    naming the address (nats-py's own error does not say where it tried)."""
    import nats
    import nats.errors

    try:
        client = await nats.connect(settings.url(), **kwargs)
    except nats.errors.NoServersError as exc:
        raise DependencyUnavailableError("nats", f"no server answered at {settings.address()}") from exc
    try:
        yield client
    finally:
        # close(), not drain(): drain can hang on a pull subscription (nats-py); publishes were awaited already.
        await client.close()


def clickhouse_client(settings: ClickHouseSettings, *, database: str | None = None) -> ClickHouseClient:
    """A native-protocol client (blocking; call it through ``asyncio.to_thread``). Connects lazily."""
    from clickhouse_driver import Client as ClickHouseClient

    return ClickHouseClient(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password.get_secret_value(),
        database=database or settings.database,
        settings={"use_numpy": False},
    )


# librdkafka retries a lost broker every few dozen milliseconds and logs each failed connect. Its log goes through
# this logger instead of straight to stderr, and a repeat of the same kind of line within KAFKA_LOG_QUIET_S is dropped:
# an outage shows as one line per client, and the process's own Retry says when it is over.
KAFKA_LOG_QUIET_S = 30.0


def _kafka_line_kind(record: logging.LogRecord) -> str | None:
    """A librdkafka warning's kind: its facility, across clients (the loms relay starts a fresh producer after every
    failed batch). confluent-kafka logs ``("%s [%s] %s", facility, client name, text)``."""
    if record.levelno < logging.WARNING:
        return None
    args = record.args if isinstance(record.args, tuple) else ()
    return str(args[0]) if args else str(record.msg)


librdkafka_log = logging.getLogger("librdkafka")
librdkafka_log.addFilter(RepeatFilter(_kafka_line_kind, quiet_s=KAFKA_LOG_QUIET_S))


def kafka_config(settings: KafkaSettings, **overrides: Any) -> Mapping[str, Any]:
    """The librdkafka configuration shared by producers, consumers and admin clients."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": "orderly",
        "logger": librdkafka_log,
        **overrides,
    }
