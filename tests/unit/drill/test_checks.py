"""The drill's checks catch what they promise to catch: each is fed a broken outcome and must say FAIL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderly.drill.clients import Outcome, Tally, call, classify
from orderly.drill.ingest import Ingest, Sent
from orderly.drill.items import Items, Owned
from orderly.drill.loms import Loms
from orderly.drill.pipeline import Tail, Target, Verdict
from orderly.drill.sums import Sums
from orderly.runner import all_processes


@pytest.fixture
def target(tmp_path: Path) -> Target:
    return Target([spec for spec in all_processes() if not spec.init], tmp_path)


def mock_http(answer: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


# --- careful clients ---------------------------------------------------------------------------------------------
def test_503_means_not_applied_unless_the_body_says_the_outcome_is_unknown() -> None:
    assert classify(httpx.Response(503, json={"error": "database_unavailable"})) is Outcome.UNAVAILABLE
    assert classify(httpx.Response(503, json={"error": "outcome_unknown", "token": "t"})) is Outcome.UNKNOWN
    assert classify(httpx.Response(500, json={"error": "internal_error"})) is Outcome.SERVER_ERROR
    assert classify(httpx.Response(409, json={"error": "request_in_progress"})) is Outcome.REJECTED
    assert classify(httpx.Response(202, json={})) is Outcome.OK


async def test_a_refused_connection_and_a_cut_one_are_counted_apart() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def cut(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    tally = Tally()
    async with mock_http(refuse) as http:
        assert (await call(http, tally, "GET", "http://x/")).outcome is Outcome.REFUSED
    async with mock_http(cut) as http:
        assert (await call(http, tally, "GET", "http://x/")).outcome is Outcome.UNKNOWN
    assert (tally.requests, tally.refused, tally.unknown, tally.server_errors) == (2, 1, 1, 0)


def test_tail_reads_only_what_was_printed_after_it_began_and_skips_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    path.write_text('{"token": "old"}\n')
    tail = Tail(path)
    with path.open("a") as out:
        out.write('{"token": "a"}\n{"tok\nnot json\n{"token": "b"}\n{"token": "c"')
    assert [r["token"] for r in tail.read("token")] == ["a", "b"]
    with path.open("a") as out:
        out.write("}\n")
    assert [r["token"] for r in tail.read("token")] == ["c"]


# --- ingest ------------------------------------------------------------------------------------------------------
def printed(pipeline: Ingest, events: list[tuple[int, Sent, int]]) -> None:
    """The daemon printed these (event id, request, position) lines."""
    with (pipeline.target.output / "ingest-daemon.log").open("a") as out:
        for event_id, sent, position in events:
            line = {"event_id": event_id, "token": sent.token, "position": position, "value": sent.numbers[position]}
            out.write(json.dumps(line) + "\n")


def two_requests(pipeline: Ingest) -> tuple[Sent, Sent]:
    """A answered before B was sent: A's events must come out first."""
    a = Sent(numbers=[pipeline.marker * 10**9 + 1, -(pipeline.marker * 10**9 + 1)], sent_at=0, answered_at=1, token="a")
    b = Sent(numbers=[pipeline.marker * 10**9 + 2], sent_at=2, answered_at=3, token="b")
    pipeline.accepted += [a, b]
    return a, b


async def ingest_verdict(pipeline: Ingest) -> Verdict:
    verdict = Verdict("ingest")
    async with mock_http(lambda _: httpx.Response(404)) as http:
        await pipeline.check(http, verdict, within=0.1)
    return verdict


async def test_the_ingest_check_passes_requests_printed_in_acceptance_order_even_when_a_batch_is_printed_twice(
    target: Target,
) -> None:
    pipeline = Ingest(target, tag="t")
    a, b = two_requests(pipeline)
    printed(pipeline, [(1, a, 0), (2, a, 1), (1, a, 0), (2, a, 1), (3, b, 0)])  # the daemon restarted after 2
    verdict = await ingest_verdict(pipeline)
    assert verdict.ok, verdict.evidence


async def test_the_ingest_check_fails_a_request_printed_before_one_answered_before_it_was_sent(
    target: Target,
) -> None:
    pipeline = Ingest(target, tag="t")
    a, b = two_requests(pipeline)
    printed(pipeline, [(1, b, 0), (2, a, 0), (3, a, 1)])
    verdict = await ingest_verdict(pipeline)
    assert not verdict.ok
    assert any(line.startswith("FAIL 1 requests printed before") for line in verdict.evidence)


async def test_the_ingest_check_fails_a_request_stored_twice_and_one_never_printed(target: Target) -> None:
    pipeline = Ingest(target, tag="t")
    a, _ = two_requests(pipeline)
    printed(pipeline, [(1, a, 0), (2, a, 1), (3, a, 0), (4, a, 1)])
    verdict = await ingest_verdict(pipeline)
    assert any(line.startswith("FAIL 1/2 accepted requests printed") for line in verdict.evidence)
    assert any(line.startswith("FAIL 1 requests stored other than exactly once") for line in verdict.evidence)


# --- sums --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "ok"), [(105, True), (110, False)])
async def test_the_sums_check_holds_the_total_to_the_sum_of_the_answered_numbers(
    target: Target, total: int, ok: bool
) -> None:
    pipeline = Sums(target, tag="t")
    pipeline.before, pipeline.applied, pipeline.bodies = 100, {"k": 5}, {"k": {b'{"sum":105}'}}
    verdict = Verdict("sums")
    async with mock_http(lambda _: httpx.Response(200, json={"sum": total})) as http:
        await pipeline.check(http, verdict, within=1)
    assert verdict.ok is ok, verdict.evidence


# --- items -------------------------------------------------------------------------------------------------------
async def test_the_items_check_fails_a_change_logged_twice(target: Target) -> None:
    pipeline = Items(target, tag="t")
    pipeline.owned = [Owned(7, 1, answered=["created", "renamed"])]
    logs = [{"name": "created"}, {"name": "renamed"}, {"name": "renamed"}]
    verdict = Verdict("items")
    async with mock_http(lambda _: httpx.Response(200, json={"logs": logs})) as http:
        await pipeline.check(http, verdict, within=0.1)
    assert any(line.startswith("FAIL 1 changes logged other than once") for line in verdict.evidence)


async def test_the_items_check_fails_a_read_that_did_not_show_the_write_before_it(target: Target) -> None:
    pipeline = Items(target, tag="t")
    pipeline.owned = [Owned(7, 3, answered=["created", "renamed"])]
    page = {"items": [{"id": 7, "name": "created"}], "meta": {"total": 3}}
    async with mock_http(lambda _: httpx.Response(200, json=page)) as http:
        await pipeline._read_back(http, pipeline.owned[0], "renamed")
        verdict = Verdict("items")
        logs = {"logs": [{"name": "created"}, {"name": "renamed"}]}
    async with mock_http(lambda _: httpx.Response(200, json=logs)) as http:
        await pipeline.check(http, verdict, within=0.1)
    assert any(line.startswith("FAIL read-your-writes: 0/1") for line in verdict.evidence), verdict.evidence


# --- loms --------------------------------------------------------------------------------------------------------
def notifier_printed(target: Target, name: str, lines: list[dict[str, Any]]) -> None:
    with (target.output / f"{name}.log").open("a") as out:
        for line in lines:
            out.write(json.dumps(line) + "\n")


@pytest.mark.parametrize(("offsets", "ok"), [((10, 11, 12), True), ((10, 12, 11), False)])
async def test_the_loms_check_holds_each_order_to_its_chronology(
    target: Target, offsets: tuple[int, int, int], ok: bool
) -> None:
    pipeline = Loms(target, tag="t")
    pipeline.orders = [42]
    statuses = ["new", "awaiting payment", "payed"]
    lines = [
        {"order_id": 42, "status": s, "occurred_at": f"2026-01-01T00:00:0{i}Z", "event_id": s, "partition": 1}
        | {"offset": offset}
        for i, (s, offset) in enumerate(zip(statuses, offsets, strict=True))
    ]
    notifier_printed(target, "notifier-2", lines)
    verdict = Verdict("loms")
    async with mock_http(lambda _: httpx.Response(200, json={"status": "payed"})) as http:
        await pipeline.check(http, verdict, within=0.1)
    assert verdict.ok is ok, verdict.evidence


async def test_the_loms_check_fails_an_order_whose_last_event_was_never_printed(target: Target) -> None:
    pipeline = Loms(target, tag="t")
    pipeline.orders = [42]
    line = {"order_id": 42, "status": "new", "occurred_at": "2026-01-01T00:00:00Z", "partition": 0, "offset": 1}
    notifier_printed(target, "notifier-1", [line | {"event_id": "e1"}])
    verdict = Verdict("loms")
    async with mock_http(lambda _: httpx.Response(200, json={"status": "cancelled"})) as http:
        await pipeline.check(http, verdict, within=0.1)
    assert any(line.startswith("FAIL 0/1 orders with every event printed") for line in verdict.evidence)
