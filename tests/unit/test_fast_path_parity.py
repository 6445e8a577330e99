"""Every fast route answers exactly like its FastAPI twin, on generated input (no servers).

Each API is built by its own ``create_app`` and called twice per input: as it serves (``Edge`` with its fast routes)
and with every request left to FastAPI (``Edge.without_fast_routes``). Status, body bytes and headers must be equal,
whatever the query, headers, body and backend outcome. The backends are fakes: a ``Publisher`` subclass for ingest,
a ``Submitter`` for sums, the items use cases replaced on their module (both paths call them through it). Their
outcomes include the outages: a service's own 503s (``overloaded``, ``storage_unavailable``, ``outcome_unknown``) and
the platform's (a transient driver error or a ``DependencyUnavailableError``, answered by ``internal_error``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.types import Message, Scope

from orderly.ingest import service as ingest_service
from orderly.ingest.app import ApiState
from orderly.ingest.app import create_app as ingest_app
from orderly.ingest.broker import Publisher
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError
from orderly.ingest.settings import IngestOptions, IngestSettings
from orderly.items import service as items_service
from orderly.items.app import Runtime
from orderly.items.app import create_app as items_app
from orderly.items.domain import (
    CampaignNotFoundError,
    InvalidFieldError,
    Item,
    ItemNotFoundError,
    clean_description,
    clean_name,
)
from orderly.items.settings import ItemsOptions, ItemsSettings
from orderly.platform.errors import DependencyUnavailableError, OutcomeUnknownError
from orderly.platform.http import Answer, Edge, FastRoute
from orderly.sums.app import Submitter, SumsState
from orderly.sums.app import create_app as sums_app
from orderly.sums.domain import (
    CommitOutcomeUnknownError,
    KeyReusedError,
    OverloadedError,
    RequestInProgressError,
    StorageUnavailableError,
    SumRequest,
)
from orderly.sums.service import Answer as SumAnswer
from orderly.sums.settings import SumsSettings
from tests.plumbing import asgi_call, http_scope

PARITY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Query text with what matters to parsing: separators, escapes, '+', signs, digits, non-ASCII, parameter names.
QUERY_ATOMS = st.sampled_from(
    [
        "n=",
        "numbers=",
        "number=",
        "ikey=",
        "limit=",
        "offset=",
        "id=",
        "campaignId=",
        "&",
        "=",
        ",",
        "%",
        "%2C",
        "%31",
        "+",
        "-",
        "0",
        "1",
        "7",
        "9",
        "42",
        "999",
        "1000",
        "9223372036854775807",
        "9223372036854775808",
        "2147483648",
        "x",
        "é",
        " ",
        ";",
    ]
)
NUMBERS = st.integers(min_value=-(2**64), max_value=2**64) | st.sampled_from([0, 1, 2**31, 2**63 - 1, 2**63])


def params(*names: str) -> st.SearchStrategy[bytes]:
    """Queries of those parameters with integer values (in range or not), sometimes repeated or missing."""
    pairs = st.lists(st.tuples(st.sampled_from(names), NUMBERS), max_size=4)
    return pairs.map(lambda kv: "&".join(f"{k}={v}" for k, v in kv).encode())


QUERIES = st.lists(QUERY_ATOMS, max_size=14).map(lambda atoms: "".join(atoms).encode())
INGEST_QUERIES = QUERIES | params("n") | params("n", "numbers")
SUM_QUERIES = QUERIES | params("number", "ikey")
LIST_QUERIES = QUERIES | params("limit", "offset")
WRITE_QUERIES = (
    QUERIES
    | params("id", "campaignId")
    | st.tuples(NUMBERS, NUMBERS).map(
        lambda ids: b"id=%d&campaignId=%d" % (abs(ids[0]) % 100 + 1, abs(ids[1]) % 100 + 1)
    )
)
HEADER_NAMES = st.sampled_from([b"idempotency-key", b"content-type", b"accept", b"x-request-id", b"x-other"])
HEADERS = st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=10)), max_size=3)
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["", " ", "x" * 300, "\ud800"])
JSON_VALUES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
ITEM_BODIES = st.one_of(
    st.fixed_dictionaries({"name": TEXT}, optional={"description": TEXT | st.none()}).map(json.dumps),
    st.fixed_dictionaries({"name": TEXT}, optional={"description": TEXT | st.none()}).map(json.dumps),
    st.dictionaries(st.sampled_from(["name", "description", "other"]), JSON_VALUES, max_size=3).map(json.dumps),
    st.sampled_from(["", " ", "{", "[]", "null", '{"name": "a", "name": 1}', "name=x", '"name"', '{"name": NaN}']),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
REQUEST_ID = (b"x-request-id", b"parity")


def scope_of(method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], state: dict[str, Any]) -> Scope:
    return http_scope(method, path, query=query, headers=[REQUEST_ID, *headers], state=state)


def spied(app: Edge, answered: list[str]) -> Edge:
    """The API with its fast routes noting when they answered (rather than handing the request on)."""

    def spy(route: FastRoute) -> FastRoute:
        async def handler(scope: Scope, body: bytes) -> Answer | None:
            try:
                answer = await route.handler(scope, body)
            except Exception:
                answered.append(route.path)
                raise
            if answer is not None:
                answered.append(route.path)
            return answer

        return dataclasses.replace(route, handler=handler)

    return Edge(app.app, service=app.service, errors=app.errors, max_body_bytes=app.max_body_bytes,
                routes=[spy(r) for r in app.routes])  # fmt: skip


def response(sent: list[Message]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, sorted((bytes(k), bytes(v)) for k, v in start["headers"])


async def assert_parity(app: Edge, scope: Scope, body: bytes = b"", *, reset: Any = None) -> None:
    answered: list[str] = []
    fast = response(await asgi_call(spied(app, answered), dict(scope), chunks=[body]))
    event(f"{scope['method']} {scope['path']}: {'fast route' if answered else 'handed on'} -> {fast[0]}")
    if reset is not None:
        reset()
    twin = response(await asgi_call(app.without_fast_routes(), dict(scope), chunks=[body]))
    assert fast == twin


# ingest -------------------------------------------------------------------------------------------------------------

TOKEN = UUID("01900000-0000-7000-8000-000000000001")
PUBLISH_OUTCOMES = st.sampled_from(
    ["confirmed", "unconfirmed", "unconfirmed, stored already", "revoke failed", "channel closed", "a bug"]
)


class FakePublisher(Publisher):
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    async def publish(self, _request: AcceptedRequest) -> None:
        if self.outcome == "channel closed":
            raise DependencyUnavailableError("rabbitmq", "the channel is closed")
        if self.outcome == "a bug":
            raise RuntimeError("a bug")
        if self.outcome != "confirmed":
            raise BrokerUnavailableError("no confirm")


class FakeConnection:
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    async def fetchval(self, _query: str, _token: UUID) -> bool:
        if self.outcome == "revoke failed":
            raise ConnectionRefusedError("postgres is down too")
        return self.outcome == "unconfirmed"


class FakePool:
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConnection]:
        yield FakeConnection(self.outcome)


@contextmanager
def fixed_tokens() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_service, "uuid7", lambda: TOKEN)
        yield


INGEST = ingest_app(IngestSettings())


@PARITY
@given(query=INGEST_QUERIES, headers=HEADERS, body=st.binary(max_size=16), outcome=PUBLISH_OUTCOMES)
async def test_ingest_answers_like_its_fastapi_route(
    query: bytes, headers: list[tuple[bytes, bytes]], body: bytes, outcome: str
) -> None:
    state = ApiState(publisher=FakePublisher(outcome), pool=FakePool(outcome), options=IngestOptions(), channel=None)  # type: ignore[arg-type]
    with fixed_tokens():
        await assert_parity(INGEST, scope_of("GET", "/ingest", query, headers, {"ingest": state}), body)


# sums ---------------------------------------------------------------------------------------------------------------

SUM_OUTCOMES = st.sampled_from(
    [
        SumAnswer(b'{"sum":42}', replayed=False),
        SumAnswer(b'{"sum":42}', replayed=True),
        KeyReusedError("used with a different request"),
        RequestInProgressError(retry_after_s=3),
        StorageUnavailableError("mysql is down"),
        CommitOutcomeUnknownError("the connection broke during the COMMIT"),
        OverloadedError("10000 requests already wait for a commit"),
        DependencyUnavailableError("redis", "connection refused"),
        OutcomeUnknownError("mysql"),
        ConnectionResetError("mysql went away"),
        RuntimeError("a bug"),
    ]
)


class FakeSubmitter(Submitter):
    def __init__(self, outcome: SumAnswer | Exception) -> None:
        self.outcome = outcome
        self.requests: list[SumRequest] = []

    async def submit(self, request: SumRequest) -> SumAnswer:
        self.requests.append(request)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


SUMS = sums_app(SumsSettings())


@PARITY
@given(
    method=st.sampled_from(["GET", "POST"]),
    path=st.sampled_from(["/sum", "/test-sum-action"]),
    query=SUM_QUERIES,
    headers=HEADERS,
    body=st.binary(max_size=16),
    outcome=SUM_OUTCOMES,
)
async def test_sums_answers_like_its_fastapi_route(
    *, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes, outcome: Any
) -> None:
    submitter = FakeSubmitter(outcome)
    state = {"sums": SumsState(service=submitter, store=None, cache=None)}  # type: ignore[arg-type]
    await assert_parity(SUMS, scope_of(method, path, query, headers, state), body)
    assert submitter.requests[1:] in ([], submitter.requests[:1]), "both paths asked the service the same"


# items --------------------------------------------------------------------------------------------------------------

CREATED_AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def item(item_id: int, campaign_id: int, name: str, description: str | None) -> Item:
    if campaign_id % 7 == 0:
        raise CampaignNotFoundError(campaign_id)
    if item_id % 5 == 0:
        raise ItemNotFoundError(item_id)
    if campaign_id % 11 == 0:
        raise ConnectionRefusedError("postgres is down")
    if campaign_id % 13 == 0:
        raise asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")
    if campaign_id % 17 == 0:
        raise OutcomeUnknownError("postgres")
    name, description = clean_name(name), clean_description(description)
    return Item(item_id, campaign_id, name, description, priority=3, removed=False, created_at=CREATED_AT)


class FakeUseCases:
    """The items use cases over no database: answers (and errors) follow from the arguments alone."""

    async def create_item(self, *, campaign_id: int, name: str, description: str | None, **_resources: Any) -> Item:
        return item(1, campaign_id, name, description)

    async def update_item(
        self, *, item_id: int, campaign_id: int, name: str, description: str | None, keep_description: bool,
        **_resources: Any,
    ) -> Item:  # fmt: skip
        return item(item_id, campaign_id, name, "kept" if keep_description else description)

    async def list_items(self, *, limit: int, offset: int, max_offset: int, **_resources: Any) -> tuple[bytes, bool]:
        if offset > max_offset:
            raise InvalidFieldError("offset", f"at most {max_offset}")
        if offset % 13 == 0:
            raise RuntimeError("a bug")
        if offset % 11 == 0:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
        return json.dumps({"items": [], "limit": limit, "offset": offset}).encode(), (limit + offset) % 2 == 0


@contextmanager
def fake_use_cases() -> Iterator[None]:
    fake = FakeUseCases()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("create_item", "update_item", "list_items"):
            patch.setattr(items_service, name, getattr(fake, name))
        yield


ITEMS = items_app(ItemsSettings())
# A small offset cap, so that generated offsets pass it as often as not.
ITEMS_OPTIONS = ItemsOptions(list_max_offset=1000)
ITEMS_STATE = {"items": Runtime(pool=None, redis=None, cache=None, changelog=None, flights=None, options=ITEMS_OPTIONS)}  # type: ignore[arg-type]


@PARITY
@given(query=LIST_QUERIES, headers=HEADERS)
async def test_items_list_answers_like_its_fastapi_route(query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    with fake_use_cases():
        await assert_parity(ITEMS, scope_of("GET", "/items/list", query, headers, ITEMS_STATE))


@PARITY
@given(
    route=st.sampled_from([("POST", "/item/create"), ("PATCH", "/item/update")]),
    query=WRITE_QUERIES,
    headers=HEADERS,
    body=ITEM_BODIES,
)
async def test_items_writes_answer_like_their_fastapi_routes(
    route: tuple[str, str], query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    with fake_use_cases():
        await assert_parity(ITEMS, scope_of(*route, query, headers, ITEMS_STATE), body)


# the fast routes do answer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "method", "path", "query", "body", "state"),
    [
        (INGEST, "GET", "/ingest", b"n=1&numbers=2,-3", b"",
         {"ingest": ApiState(FakePublisher("confirmed"), FakePool("confirmed"), IngestOptions(), None)}),  # type: ignore[arg-type]
        (SUMS, "POST", "/sum", b"number=5&ikey=k", b"",
         {"sums": SumsState(FakeSubmitter(SumAnswer(b'{"sum":5}', replayed=False)), None, None)}),  # type: ignore[arg-type]
        (ITEMS, "GET", "/items/list", b"limit=5&offset=2", b"", ITEMS_STATE),
        (ITEMS, "POST", "/item/create", b"campaignId=1", b'{"name": "a"}', ITEMS_STATE),
        (ITEMS, "PATCH", "/item/update", b"id=1&campaignId=1", b'{"name": "b", "description": null}', ITEMS_STATE),
    ],
)  # fmt: skip
async def test_valid_input_is_answered_by_the_fast_route_not_by_fastapi(
    *, app: Edge, method: str, path: str, query: bytes, body: bytes, state: dict[str, Any]
) -> None:
    async def fastapi(_scope: Scope, _receive: Any, _send: Any) -> None:
        raise AssertionError("the request went on to FastAPI")

    fast_only = Edge(fastapi, service=app.service, errors=app.errors, max_body_bytes=app.max_body_bytes,  # type: ignore[arg-type]
                     routes=app.routes)  # fmt: skip
    with fixed_tokens(), fake_use_cases():
        sent = await asgi_call(fast_only, scope_of(method, path, query, [], state), chunks=[body])
    assert sent[0]["status"] in (200, 202)


# outages: a 503 that says to retry, the same on both paths --------------------------------------------------------


def ingest_state(outcome: str) -> dict[str, Any]:
    return {"ingest": ApiState(FakePublisher(outcome), FakePool(outcome), IngestOptions(), None)}  # type: ignore[arg-type]


def sums_state(error: Exception) -> dict[str, Any]:
    return {"sums": SumsState(FakeSubmitter(error), None, None)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("app", "method", "path", "query", "body", "state", "error", "dependency"),
    [
        pytest.param(INGEST, "GET", "/ingest", b"n=1", b"", ingest_state("unconfirmed"),
                     "broker_unavailable", "rabbitmq", id="ingest-unconfirmed"),
        pytest.param(INGEST, "GET", "/ingest", b"n=1", b"", ingest_state("revoke failed"),
                     "outcome_unknown", "rabbitmq", id="ingest-revoke-failed"),
        pytest.param(INGEST, "GET", "/ingest", b"n=1", b"", ingest_state("channel closed"),
                     "dependency_unavailable", "rabbitmq", id="ingest-channel-closed"),
        pytest.param(SUMS, "GET", "/sum", b"number=1", b"", sums_state(OverloadedError("queue full")),
                     "overloaded", None, id="sums-overloaded"),
        pytest.param(SUMS, "POST", "/sum", b"number=1", b"", sums_state(StorageUnavailableError("mysql is down")),
                     "storage_unavailable", "mysql", id="sums-mysql-down"),
        pytest.param(SUMS, "GET", "/sum", b"number=1&ikey=k", b"", sums_state(CommitOutcomeUnknownError("cut off")),
                     "outcome_unknown", "mysql", id="sums-commit-cut-off"),
        pytest.param(SUMS, "GET", "/test-sum-action", b"", b"",
                     sums_state(DependencyUnavailableError("redis", "connection refused")),
                     "dependency_unavailable", "redis", id="sums-redis-down"),
        pytest.param(ITEMS, "GET", "/items/list", b"offset=11", b"", ITEMS_STATE,
                     "dependency_unavailable", "postgres", id="items-list-postgres-restarting"),
        pytest.param(ITEMS, "POST", "/item/create", b"campaignId=13", b'{"name": "a"}', ITEMS_STATE,
                     "dependency_unavailable", "postgres", id="items-create-postgres-shut-down"),
        pytest.param(ITEMS, "PATCH", "/item/update", b"id=1&campaignId=17", b'{"name": "a"}', ITEMS_STATE,
                     "outcome_unknown", "postgres", id="items-update-commit-cut-off"),
    ],
)  # fmt: skip
async def test_an_outage_on_a_fast_route_is_the_same_503_naming_the_dependency_on_both_paths(
    *,
    app: Edge,
    method: str,
    path: str,
    query: bytes,
    body: bytes,
    state: dict[str, Any],
    error: str,
    dependency: str | None,
) -> None:
    answered: list[str] = []
    with fixed_tokens(), fake_use_cases():
        fast = response(await asgi_call(spied(app, answered), scope_of(method, path, query, [], state), chunks=[body]))
        twin = response(
            await asgi_call(app.without_fast_routes(), scope_of(method, path, query, [], state), chunks=[body])
        )
    assert answered == [path], "the fast route answered"
    status, raw, headers = fast
    assert status == 503
    assert b"retry-after" in dict(headers)
    answer = json.loads(raw)
    assert (answer["error"], answer.get("dependency")) == (error, dependency)
    assert fast == twin
