"""The accept use case with a publisher fake: 202 only after a confirm; a lost confirm is settled by revocation."""

from __future__ import annotations

from uuid import UUID

import pytest

from orderly.ingest.broker import Publisher
from orderly.ingest.domain import AcceptedRequest, BrokerUnavailableError, OutcomeUnknownError
from orderly.ingest.service import accept
from orderly.ingest.settings import IngestOptions


class FakePublisher(Publisher):
    def __init__(self, *, confirm: bool) -> None:
        self.confirm = confirm
        self.published: list[AcceptedRequest] = []

    async def publish(self, request: AcceptedRequest) -> None:
        self.published.append(request)
        if not self.confirm:
            raise BrokerUnavailableError("no confirm")


def revoker(answer: bool, revoked: list[UUID]):  # type: ignore[no-untyped-def]
    async def revoke(token: UUID) -> bool:
        revoked.append(token)
        return answer

    return revoke


async def test_confirmed_publish_is_accepted_without_touching_the_database() -> None:
    publisher, revoked = FakePublisher(confirm=True), []
    accepted = await accept(
        query=b"n=1&n=2", publisher=publisher, revoke=revoker(True, revoked), options=IngestOptions()
    )
    assert accepted.numbers == (1, 2)
    assert publisher.published == [accepted]
    assert revoked == []


async def test_unconfirmed_publish_is_refused_once_its_token_is_revoked() -> None:
    publisher, revoked = FakePublisher(confirm=False), []
    with pytest.raises(BrokerUnavailableError):
        await accept(query=b"n=1", publisher=publisher, revoke=revoker(True, revoked), options=IngestOptions())
    assert revoked == [publisher.published[0].token]


async def test_unconfirmed_publish_already_stored_counts_as_accepted() -> None:
    publisher, revoked = FakePublisher(confirm=False), []
    accepted = await accept(query=b"n=1", publisher=publisher, revoke=revoker(False, revoked), options=IngestOptions())
    assert revoked == [accepted.token]


async def test_tokens_are_unique_and_time_ordered() -> None:
    publisher = FakePublisher(confirm=True)
    tokens = [
        (await accept(query=b"n=1", publisher=publisher, revoke=revoker(True, []), options=IngestOptions())).token
        for _ in range(100)
    ]
    assert len(set(tokens)) == 100
    assert tokens == sorted(tokens)
    assert {t.version for t in tokens} == {7}


async def test_unconfirmed_publish_that_cannot_be_revoked_is_reported_as_outcome_unknown_with_its_token() -> None:
    publisher = FakePublisher(confirm=False)

    async def database_down(_token: UUID) -> bool:
        raise OSError("connection refused")

    with pytest.raises(OutcomeUnknownError) as caught:
        await accept(query=b"n=1", publisher=publisher, revoke=database_down, options=IngestOptions())
    assert caught.value.token == publisher.published[0].token
    assert isinstance(caught.value, BrokerUnavailableError)  # still a 503, never a 500
