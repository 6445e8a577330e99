"""The pure rules: input validation, fingerprints, Redis states, and the batch plan (no servers)."""

from __future__ import annotations

import pytest

from orderly.sums.domain import (
    MAX_NUMBER,
    Applied,
    Conflict,
    InProgressMark,
    InvalidInputError,
    KeyReusedError,
    Replayed,
    RequestInProgressError,
    StoredResponse,
    SumRequest,
    decide_on_cached,
    decode_state,
    parse_request,
    plan_batch,
    render_sum,
)


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "abc", "", " 1", "1e3", "+1", str(10**30), str(MAX_NUMBER + 1)])
def test_a_number_that_is_not_natural_up_to_10_pow_18_is_rejected_naming_number(raw: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_request(number=raw, query_key=None, header_key=None)
    assert [p.field for p in caught.value.problems] == ["number"]


@pytest.mark.parametrize("raw", ["1", "42", str(MAX_NUMBER)])
def test_natural_numbers_up_to_10_pow_18_are_accepted_exactly(raw: str) -> None:
    assert parse_request(number=raw, query_key=None, header_key=None).number == int(raw)


@pytest.mark.parametrize("key", ["", "k" * 256, "k" * 10_240])
def test_an_empty_or_over_long_key_is_rejected_in_query_and_header(key: str) -> None:
    with pytest.raises(InvalidInputError) as by_query:
        parse_request(number="1", query_key=key, header_key=None)
    with pytest.raises(InvalidInputError) as by_header:
        parse_request(number="1", query_key=None, header_key=key)
    assert [p.field for p in by_query.value.problems] == ["ikey"]
    assert [p.field for p in by_header.value.problems] == ["Idempotency-Key"]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_request(number="x", query_key="", header_key="k" * 300)
    assert [p.field for p in caught.value.problems] == ["number", "ikey", "Idempotency-Key"]


def test_the_key_may_come_from_query_or_header_but_two_different_keys_are_rejected() -> None:
    assert parse_request(number="1", query_key="a", header_key=None).key == "a"
    assert parse_request(number="1", query_key=None, header_key="a").key == "a"
    assert parse_request(number="1", query_key="a", header_key="a").key == "a"
    assert parse_request(number="1", query_key="k" * 255, header_key=None).key == "k" * 255
    with pytest.raises(InvalidInputError):
        parse_request(number="1", query_key="a", header_key="b")


def test_the_fingerprint_depends_on_the_number_only() -> None:
    assert SumRequest(5, "a").fingerprint == SumRequest(5, "b").fingerprint
    assert SumRequest(5, "a").fingerprint != SumRequest(6, "a").fingerprint
    assert SumRequest(None, "a").fingerprint != SumRequest(1, "a").fingerprint


def test_redis_states_round_trip_and_garbage_reads_as_absent() -> None:
    mark = InProgressMark(owner="i1:abc", fingerprint="f" * 64)
    done = StoredResponse(fingerprint="e" * 64, body=b'{"sum":12}')
    assert decode_state(mark.encode().encode()) == mark
    assert decode_state(done.encode()) == done
    assert decode_state(b"In Process") is None
    assert decode_state(b"X|a|b") is None


def test_a_cached_response_with_the_same_fingerprint_is_replayed() -> None:
    stored = StoredResponse(fingerprint="f", body=b'{"sum":3}')
    assert decide_on_cached(stored, fingerprint="f", pttl_ms=1000) == Replayed(b'{"sum":3}')


def test_a_cached_key_with_another_fingerprint_is_a_422_even_while_in_progress() -> None:
    with pytest.raises(KeyReusedError):
        decide_on_cached(StoredResponse(fingerprint="f", body=b"{}"), fingerprint="g", pttl_ms=1)
    with pytest.raises(KeyReusedError):
        decide_on_cached(InProgressMark(owner="o", fingerprint="f"), fingerprint="g", pttl_ms=1)


@pytest.mark.parametrize(("pttl_ms", "retry_after"), [(1, 1), (999, 1), (1001, 2), (10_000, 10), (-1, 1)])
def test_a_repeat_in_progress_is_a_409_with_retry_after_from_the_marks_ttl(pttl_ms: int, retry_after: int) -> None:
    with pytest.raises(RequestInProgressError) as caught:
        decide_on_cached(InProgressMark(owner="o", fingerprint="f"), fingerprint="f", pttl_ms=pttl_ms)
    assert caught.value.retry_after_s == retry_after


def test_each_request_in_a_batch_gets_its_own_post_update_sum() -> None:
    plan = plan_batch(100, [SumRequest(1, None), SumRequest(2, "a"), SumRequest(None, "b"), SumRequest(3, None)], {})
    assert plan.outcomes == (
        Applied(render_sum(101)),
        Applied(render_sum(103)),
        Applied(render_sum(103)),
        Applied(render_sum(106)),
    )
    assert plan.delta == 6
    assert plan.total_after == 106
    assert [key for key, _ in plan.new_keys] == ["a", "b"]


def test_a_key_already_stored_is_replayed_or_conflicts_and_adds_nothing() -> None:
    stored = {"a": StoredResponse(fingerprint=SumRequest(2, "a").fingerprint, body=b'{"sum":7}')}
    plan = plan_batch(50, [SumRequest(2, "a"), SumRequest(9, "a"), SumRequest(1, "c")], stored)
    assert plan.outcomes == (Replayed(b'{"sum":7}'), Conflict(), Applied(render_sum(51)))
    assert plan.delta == 1
    assert [key for key, _ in plan.new_keys] == ["c"]


def test_a_key_repeated_inside_one_batch_is_applied_once() -> None:
    plan = plan_batch(0, [SumRequest(5, "k"), SumRequest(5, "k"), SumRequest(6, "k")], {})
    assert plan.outcomes == (Applied(render_sum(5)), Replayed(render_sum(5)), Conflict())
    assert plan.delta == 5
    assert len(plan.new_keys) == 1


def test_the_sum_is_an_exact_integer_far_beyond_64_bits() -> None:
    big = 10**40
    plan = plan_batch(big, [SumRequest(MAX_NUMBER, None)], {})
    assert plan.outcomes == (Applied(b'{"sum":%d}' % (big + MAX_NUMBER)),)
