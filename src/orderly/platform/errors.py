"""One classification of failures for every process: transient, permanent or poison.

* **Transient**: the server is away or busy (connection refused or lost, admin shutdown, cannot connect now, broker or
  channel closed, Kafka transport errors, Redis and MySQL connection errors, NATS disconnects and timeouts). Wait and
  try again: the same work succeeds once the server is back.
* **Permanent**: nothing will change by waiting (database or schema missing, authentication refused, a topic or queue
  of the wrong shape). Stop with one line that names the fix.
* **Poison**: this one piece of work can never succeed (bad data, a constraint it breaks); anything not recognised as
  one of the other two counts here, so the caller's own rule (dead-letter, stop the line) applies to it.

``classify`` knows each driver family this project uses: asyncpg, asyncmy, redis, aiormq/aio-pika, nats,
clickhouse_driver and confluent_kafka. A plain ``OSError`` or ``TimeoutError`` (a refused connect, a read timeout) is
attributed to the driver whose code raised it, found in the traceback. Driver modules are looked up by name, never
imported here, so a process pays only for the clients it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

# Driver package → the dependency name used in log lines, 503 bodies and docs.
DRIVERS: dict[str, str] = {
    "asyncpg": "postgres",
    "asyncmy": "mysql",
    "redis": "redis",
    "aiormq": "rabbitmq",
    "aio_pika": "rabbitmq",
    "pamqp": "rabbitmq",
    "nats": "nats",
    "clickhouse_driver": "clickhouse",
    "confluent_kafka": "kafka",
    "cimpl": "kafka",  # confluent_kafka's C extension: KafkaException and KafkaError say they come from here
}

INIT_FIX = "run `orderly init`"
CREDENTIALS_FIX = "check the {dependency} user and password in the settings (ORDERLY_{env}__USER, __PASSWORD)"


@dataclass(frozen=True, slots=True)
class Transient:
    """Wait and retry: the dependency is away or busy."""

    dependency: str
    reason: str


@dataclass(frozen=True, slots=True)
class Permanent:
    """Waiting will not help: ``fix`` says what the operator has to do."""

    dependency: str
    reason: str
    fix: str

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.fix}"


@dataclass(frozen=True, slots=True)
class Poison:
    """This one piece of work cannot succeed (or the failure is not one we know): the caller's rule applies."""

    dependency: str
    reason: str


Fault = Transient | Permanent | Poison


class PermanentError(Exception):
    """A process cannot go on until the operator acts; ``str()`` is the one line naming the fix."""

    def __init__(self, fault: Permanent) -> None:
        super().__init__(fault.message)
        self.fault = fault


class OutcomeUnknownError(Exception):
    """A write's connection broke while its commit was under way: it may or may not have been applied."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"the connection to {dependency} broke during the commit: the write may have been applied")
        self.dependency = dependency


class DependencyUnavailableError(Exception):
    """A service's own way to say that a dependency cannot be used now (answered 503, retried by processes)."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency, self.reason = dependency, reason


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _package(obj: Any) -> str:
    return (getattr(obj, "__module__", None) or "").partition(".")[0]


def driver_of(exc: BaseException) -> str | None:
    """The driver package that raised ``exc``: its class's package, else the innermost driver frame of its traceback."""
    package = _package(type(exc))
    if package in DRIVERS:
        return package
    found = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        if name in DRIVERS:
            found = name
        tb = tb.tb_next
    return found


def classify(exc: BaseException, *, dependency: str | None = None) -> Fault:
    """The class of ``exc``; ``dependency`` names the server when the exception and its traceback do not tell."""
    if isinstance(exc, PermanentError):
        return exc.fault
    if isinstance(exc, DependencyUnavailableError):
        return Transient(exc.dependency, exc.reason)
    driver = driver_of(exc)
    name = DRIVERS.get(driver or "", dependency or "a dependency")
    reason = _one_line(exc)
    by_driver = _CLASSIFIERS.get(driver or "")
    fault: Fault | None = by_driver(exc, name, reason) if by_driver is not None else None
    if fault is not None:
        return fault
    if isinstance(exc, OSError | TimeoutError | EOFError | ConnectionError):
        return Transient(name, reason)
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        return classify(cause, dependency=dependency if driver is None else name)
    return Poison(name, reason)


def is_transient(exc: BaseException, *, dependency: str | None = None) -> bool:
    return isinstance(classify(exc, dependency=dependency), Transient)


def _postgres(exc: BaseException, name: str, reason: str) -> Fault | None:  # noqa: PLR0911 - a table of cases
    import asyncpg

    e = asyncpg.exceptions
    if isinstance(exc, e.InvalidCatalogNameError):  # 3D000 database "…" does not exist
        return Permanent(name, reason, INIT_FIX)
    if isinstance(exc, e.InvalidAuthorizationSpecificationError | e.InvalidPasswordError):  # 28000, 28P01
        return Permanent(name, reason, CREDENTIALS_FIX.format(dependency=name, env="POSTGRES"))
    if isinstance(exc, e.UndefinedTableError | e.UndefinedFunctionError | e.UndefinedColumnError):  # schema missing
        return Permanent(name, reason, INIT_FIX)
    if isinstance(
        exc,
        e.PostgresConnectionError  # 08: connection does not exist, failure, cannot connect
        | e.CannotConnectNowError  # 57P03 the database system is starting up / shutting down
        | e.OperatorInterventionError  # 57: admin_shutdown, crash_shutdown, query cancelled
        | e.InsufficientResourcesError  # 53: too many connections, out of memory, disk full
        | e.SerializationError
        | e.DeadlockDetectedError
        | e.LockNotAvailableError,
    ):
        return Transient(name, reason)
    if isinstance(exc, e.InternalClientError):
        # Raised by asyncpg's pool and protocol when a connection broke under them ("not connected", a connection
        # holder in an unexpected state): seen during a PostgreSQL restart under load, and gone once it is back.
        return Transient(name, reason)
    if isinstance(exc, e.InterfaceError):
        # "connection is closed", "pool is closing", a connection released while in use: all the pool's broken
        # connections. Anything else of this class is a bug in the caller.
        text = reason.lower()
        if "closed" in text or "closing" in text or ("connection" in text and "lost" in text):
            return Transient(name, reason)
        return Poison(name, reason)
    if isinstance(exc, e.DataError | e.IntegrityConstraintViolationError):
        return Poison(name, reason)
    return None


# MySQL/MariaDB error numbers: client side (2xxx) and server side.
_MYSQL_TRANSIENT = {
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    1927,  # connection was killed
    2002,  # can't connect (socket)
    2003,  # can't connect
    2005,  # unknown host (DNS blip)
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection at reading
}
_MYSQL_PERMANENT = {1044: INIT_FIX, 1045: "credentials", 1049: INIT_FIX, 1146: INIT_FIX}


def _mysql(exc: BaseException, name: str, reason: str) -> Fault | None:
    import asyncmy.errors

    if isinstance(exc, RuntimeError) and "after closing pool" in reason:
        # The API is stopping and closed its pool under a request still in flight: 503, a client retries elsewhere.
        return Transient(name, reason)
    if not isinstance(exc, asyncmy.errors.Error):
        return None
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code in _MYSQL_PERMANENT:
        fix = _MYSQL_PERMANENT[code]
        return Permanent(
            name, reason, CREDENTIALS_FIX.format(dependency=name, env="MYSQL") if fix == "credentials" else fix
        )
    if code in _MYSQL_TRANSIENT or isinstance(exc, asyncmy.errors.InterfaceError | asyncmy.errors.OperationalError):
        return Transient(name, reason)
    return Poison(name, reason)


def _redis(exc: BaseException, name: str, reason: str) -> Fault | None:
    import redis.exceptions as r

    if isinstance(exc, r.AuthenticationError | r.AuthorizationError | r.NoPermissionError):
        return Permanent(name, reason, CREDENTIALS_FIX.format(dependency=name, env="REDIS"))
    if isinstance(exc, r.ConnectionError | r.TimeoutError | r.BusyLoadingError | r.ReadOnlyError | r.TryAgainError):
        return Transient(name, reason)
    if isinstance(exc, r.ResponseError | r.DataError):
        return Poison(name, reason)
    return None


def _rabbitmq(exc: BaseException, name: str, reason: str) -> Fault | None:  # noqa: PLR0911 - a table of cases
    import aiormq.exceptions as a

    if isinstance(exc, a.ProbableAuthenticationError | a.AuthenticationError | a.ChannelAccessRefused):
        return Permanent(name, reason, CREDENTIALS_FIX.format(dependency=name, env="RABBITMQ") + " and the vhost")
    if isinstance(exc, a.ChannelPreconditionFailed):  # 406: declared with other arguments than the existing queue
        return Permanent(name, reason, "the queue exists with other arguments: delete it or fix the settings")
    if isinstance(exc, a.IncompatibleProtocolError):
        return Permanent(name, reason, "point the settings at an AMQP 0-9-1 server")
    if isinstance(exc, a.ChannelNotFoundEntity):
        return Permanent(name, reason, INIT_FIX)
    if isinstance(exc, a.AMQPConnectionError | a.ChannelClosed | a.ChannelInvalidStateError | a.AMQPChannelError):
        return Transient(name, reason)
    if isinstance(exc, a.DeliveryError):
        return Transient(name, reason)
    return None


def _nats(exc: BaseException, name: str, reason: str) -> Fault | None:  # noqa: PLR0911 - a table of cases
    import nats.errors as n
    import nats.js.errors as j

    if isinstance(exc, n.AuthorizationError):
        return Permanent(name, reason, "check the NATS credentials in the settings")
    if isinstance(exc, j.ServiceUnavailableError | j.ServerError | j.NoStreamResponseError | j.FetchTimeoutError):
        return Transient(name, reason)
    if isinstance(exc, j.BadRequestError):  # 400: e.g. a stream that exists with another configuration
        return Permanent(name, reason, "the JetStream stream exists with another configuration: fix or delete it")
    if isinstance(exc, j.NotFoundError):
        return Permanent(name, reason, INIT_FIX)
    if isinstance(exc, j.APIError):
        code = exc.code or 0
        return Transient(name, reason) if code >= 500 or code in (408, 429) else Poison(name, reason)
    if isinstance(exc, n.JsonParseError | n.MaxPayloadError | n.BadSubjectError | n.MsgAlreadyAckdError):
        return Poison(name, reason)
    if isinstance(exc, n.Error):  # closed, reconnecting, no servers, no responders, timeouts, stale connection
        return Transient(name, reason)
    return None


_CLICKHOUSE_PERMANENT = {81: INIT_FIX, 60: INIT_FIX, 192: "credentials", 193: "credentials", 516: "credentials"}
# Timeouts, too many queries/parts, memory limit, a read-only replica, a cancelled query, network, keeper.
_CLICKHOUSE_TRANSIENT = {159, 202, 209, 210, 241, 242, 252, 394, 425, 999}


def _clickhouse(exc: BaseException, name: str, reason: str) -> Fault | None:
    import clickhouse_driver.errors as c

    if isinstance(exc, c.NetworkError | c.SocketTimeoutError | c.UnexpectedPacketFromServerError):
        return Transient(name, reason)
    if isinstance(exc, c.Error):
        code = getattr(exc, "code", None)
        if code in _CLICKHOUSE_PERMANENT:
            fix = _CLICKHOUSE_PERMANENT[code]
            text = CREDENTIALS_FIX.format(dependency=name, env="CLICKHOUSE") if fix == "credentials" else fix
            return Permanent(name, reason, text)
        if code in _CLICKHOUSE_TRANSIENT:
            return Transient(name, reason)
        return Poison(name, reason)
    return None


def _kafka(exc: BaseException, name: str, _reason: str) -> Fault | None:
    from confluent_kafka import KafkaError, KafkaException

    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(error, KafkaError):
        return None
    return classify_kafka_error(error, name=name)


def classify_kafka_error(error: Any, *, name: str = "kafka") -> Fault:
    """A librdkafka ``KafkaError`` (as ``Message.error()`` or a delivery report gives it)."""
    from confluent_kafka import KafkaError

    code, reason = error.code(), " ".join(str(error.str()).split())
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
        return Permanent(name, reason, INIT_FIX)
    if code in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    ):
        return Permanent(name, reason, "check the Kafka credentials and ACLs in the settings")
    if code in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError._VALUE_SERIALIZATION,
        KafkaError._KEY_SERIALIZATION,
        KafkaError._BAD_MSG,
    ):
        return Poison(name, reason)
    if error.retriable() or code in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.BROKER_NOT_AVAILABLE,
    ):
        return Transient(name, reason)
    if error.fatal():
        # A fatal idempotent-producer state: this producer cannot go on, but a fresh one can.
        return Transient(name, reason)
    return Poison(name, reason)


_CLASSIFIERS: dict[str, Any] = {
    "asyncpg": _postgres,
    "asyncmy": _mysql,
    "redis": _redis,
    "aiormq": _rabbitmq,
    "aio_pika": _rabbitmq,
    "pamqp": _rabbitmq,
    "nats": _nats,
    "clickhouse_driver": _clickhouse,
    "confluent_kafka": _kafka,
    "cimpl": _kafka,
}
