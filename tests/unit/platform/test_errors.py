"""The one classification of failures: each driver family's real exceptions come out transient, permanent or poison.

Connection failures are provoked for real (a connect to a port nobody listens on), so the exception carries the
driver's own traceback; the server-side errors are the library's own exception classes as the driver raises them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq.exceptions
import asyncmy
import asyncmy.errors
import asyncpg
import clickhouse_driver.errors
import nats.errors
import nats.js.errors
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from clickhouse_driver import Client as ClickHouseClient
from confluent_kafka import KafkaError, KafkaException, Producer

from orderly.platform.errors import (
    DependencyUnavailableError,
    Fault,
    Permanent,
    PermanentError,
    Poison,
    Transient,
    classify,
    classify_kafka_error,
    driver_of,
)
from tests.plumbing import free_port


async def raised(attempt: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await attempt()
    except Exception as exc:
        return exc
    raise AssertionError("the attempt did not fail")


async def test_a_refused_postgres_connect_is_transient_and_named_postgres() -> None:
    exc = await raised(lambda: asyncpg.connect(host="127.0.0.1", port=free_port(), user="u", database="d"))
    assert isinstance(exc, ConnectionRefusedError)  # a plain OSError: only the traceback says it was asyncpg
    assert driver_of(exc) == "asyncpg"
    assert classify(exc) == Transient("postgres", classify(exc).reason)


async def test_a_refused_redis_connect_is_transient() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port())
    try:
        exc = await raised(client.ping)
    finally:
        await client.aclose()
    assert isinstance(exc, redis.exceptions.ConnectionError)
    assert isinstance(classify(exc), Transient)
    assert classify(exc).dependency == "redis"


async def test_a_refused_mysql_connect_is_transient() -> None:
    exc = await raised(lambda: asyncmy.connect(host="127.0.0.1", port=free_port(), user="u", connect_timeout=2))
    assert isinstance(exc, asyncmy.errors.OperationalError)
    assert exc.args[0] == 2003
    assert classify(exc) == Transient("mysql", classify(exc).reason)


async def test_a_request_meeting_a_mysql_pool_closed_by_shutdown_is_transient_not_a_bug() -> None:
    # Seen under load while `orderly sums api` stopped: requests still in flight got 500 and a traceback each.
    pool = await asyncmy.create_pool(host="127.0.0.1", port=free_port(), user="u", minsize=0, maxsize=1)
    pool.close()
    await pool.wait_closed()

    async def acquire() -> None:
        async with pool.acquire():
            pass

    exc = await raised(acquire)
    assert isinstance(exc, RuntimeError)
    assert classify(exc) == Transient("mysql", classify(exc).reason)


async def test_a_refused_amqp_connect_is_transient() -> None:
    import aio_pika

    exc = await raised(lambda: aio_pika.connect(f"amqp://u:p@127.0.0.1:{free_port()}/"))
    assert isinstance(exc, aiormq.exceptions.AMQPConnectionError)
    assert classify(exc) == Transient("rabbitmq", classify(exc).reason)


def test_a_refused_clickhouse_connect_is_transient() -> None:
    client = ClickHouseClient(host="127.0.0.1", port=free_port(), connect_timeout=1)
    with pytest.raises(clickhouse_driver.errors.NetworkError) as caught:
        client.execute("SELECT 1")
    assert classify(caught.value) == Transient("clickhouse", classify(caught.value).reason)


async def test_kafka_without_a_broker_is_transient() -> None:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    with pytest.raises(KafkaException) as caught:
        await asyncio.to_thread(producer.list_topics, timeout=1)
    assert caught.value.args[0].code() == KafkaError._TRANSPORT
    assert classify(caught.value) == Transient("kafka", classify(caught.value).reason)


# Each dependency's real exceptions, as its driver raises them, and the class each must come out as.
DRIVER_ERRORS: dict[str, list[tuple[BaseException, type[Fault]]]] = {
    "postgres": [
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), Transient),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), Transient),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), Transient),
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), Transient),
        (asyncpg.exceptions.SerializationError("could not serialize access"), Transient),
        (asyncpg.exceptions.InterfaceError("cannot call Connection.fetch(): connection is closed"), Transient),
        (asyncpg.exceptions.InternalClientError("not connected"), Transient),
        (asyncpg.exceptions.InvalidCatalogNameError('database "orderly_ingest" does not exist'), Permanent),
        (asyncpg.exceptions.InvalidPasswordError('password authentication failed for user "x"'), Permanent),
        (asyncpg.exceptions.UndefinedTableError('relation "requests" does not exist'), Permanent),
        (asyncpg.exceptions.UndefinedFunctionError("function ingest_store_batch does not exist"), Permanent),
        (asyncpg.exceptions.CheckViolationError('new row violates check constraint "stock_count"'), Poison),
        (asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax for type json"), Poison),
        (asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"), Poison),
    ],
    "mysql": [
        (asyncmy.errors.OperationalError(2006, "MySQL server has gone away"), Transient),
        (asyncmy.errors.OperationalError(2013, "Lost connection to MySQL server during query"), Transient),
        (asyncmy.errors.OperationalError(1053, "Server shutdown in progress"), Transient),
        (asyncmy.errors.OperationalError(1213, "Deadlock found when trying to get lock"), Transient),
        (asyncmy.errors.OperationalError(1049, "Unknown database 'orderly_sums'"), Permanent),
        (asyncmy.errors.OperationalError(1045, "Access denied for user 'x'@'localhost'"), Permanent),
        (asyncmy.errors.ProgrammingError(1146, "Table 'orderly_sums.sum_total' doesn't exist"), Permanent),
        (asyncmy.errors.DataError(1406, "Data too long for column 'ikey'"), Poison),
    ],
    "redis": [
        (redis.exceptions.ConnectionError("Connection closed by server."), Transient),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), Transient),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), Transient),
        (redis.exceptions.AuthenticationError("invalid username-password pair"), Permanent),
        (redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), Poison),
    ],
    "rabbitmq": [
        (aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure"), Transient),
        (aiormq.exceptions.ChannelInvalidStateError("No active transport for channel"), Transient),
        (aiormq.exceptions.ChannelClosed(None, None), Transient),
        (aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"), Permanent),
        (aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED - access to vhost refused"), Permanent),
        (
            aiormq.exceptions.ChannelPreconditionFailed("PRECONDITION_FAILED - inequivalent arg 'x-max-length'"),
            Permanent,
        ),
    ],
    "nats": [
        (nats.errors.NoServersError(), Transient),
        (nats.errors.ConnectionClosedError(), Transient),
        (nats.errors.ConnectionReconnectingError(), Transient),
        (nats.errors.TimeoutError(), Transient),
        (nats.errors.NoRespondersError(), Transient),
        (
            nats.js.errors.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"),
            Transient,
        ),
        (nats.errors.AuthorizationError(), Permanent),
        (
            nats.js.errors.BadRequestError(
                code=400, description="stream name already in use with a different configuration"
            ),
            Permanent,
        ),
        (nats.errors.MaxPayloadError(), Poison),
    ],
    "clickhouse": [
        (clickhouse_driver.errors.SocketTimeoutError("timed out"), Transient),
        (clickhouse_driver.errors.ServerException("Too many simultaneous queries", code=202), Transient),
        (clickhouse_driver.errors.ServerException("Database orderly_items doesn't exist", code=81), Permanent),
        (clickhouse_driver.errors.ServerException("Table orderly_items.item_events doesn't exist", code=60), Permanent),
        (clickhouse_driver.errors.ServerException("Authentication failed", code=516), Permanent),
        (clickhouse_driver.errors.ServerException("Memory limit (total) exceeded", code=241), Transient),
        (clickhouse_driver.errors.ServerException("Cannot parse input", code=27), Poison),
    ],
}


@pytest.mark.parametrize(
    ("dependency", "exc", "expected"),
    [(dependency, exc, expected) for dependency, cases in DRIVER_ERRORS.items() for exc, expected in cases],
)
def test_a_driver_error_comes_out_transient_permanent_or_poison_under_its_dependency(
    dependency: str, exc: BaseException, expected: type[Fault]
) -> None:
    fault = classify(exc)
    assert isinstance(fault, expected)
    assert fault.dependency == dependency


def test_a_missing_database_names_the_fix_in_one_line() -> None:
    fault = classify(asyncpg.exceptions.InvalidCatalogNameError('database "orderly_ingest" does not exist'))
    assert isinstance(fault, Permanent)
    assert fault.message == 'database "orderly_ingest" does not exist: run `orderly init`'
    assert str(PermanentError(fault)) == fault.message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError._TRANSPORT, Transient),
        (KafkaError._ALL_BROKERS_DOWN, Transient),
        (KafkaError._MSG_TIMED_OUT, Transient),
        (KafkaError.NOT_LEADER_FOR_PARTITION, Transient),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, Permanent),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, Permanent),
        (KafkaError.MSG_SIZE_TOO_LARGE, Poison),
    ],
)
def test_kafka_errors(code: int, expected: type[Fault]) -> None:
    assert isinstance(classify(KafkaException(KafkaError(code))), expected)
    assert isinstance(classify_kafka_error(KafkaError(code)), expected)
    assert classify(KafkaException(KafkaError(code))).dependency == "kafka"


def test_an_error_wrapping_a_driver_error_is_classified_by_its_cause() -> None:
    class ChannelLostError(Exception):
        pass

    def lose_channel() -> None:
        raise ChannelLostError from aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")

    with pytest.raises(ChannelLostError) as caught:
        lose_channel()
    assert isinstance(classify(caught.value), Transient)
    assert classify(caught.value).dependency == "rabbitmq"


def test_a_bare_os_error_is_transient_under_the_dependency_the_caller_names() -> None:
    assert classify(ConnectionResetError(104, "reset"), dependency="postgres") == Transient(
        "postgres", "[Errno 104] reset"
    )


def test_an_unknown_error_is_poison_so_the_callers_rule_applies() -> None:
    assert isinstance(classify(KeyError("x")), Poison)


def test_a_service_can_say_a_dependency_is_unavailable() -> None:
    assert classify(DependencyUnavailableError("redis", "skipped")) == Transient("redis", "skipped")
