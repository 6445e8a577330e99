"""Kafka's storage format takes a generated cluster id on its command line; it must never look like an option."""

from __future__ import annotations

import base64
import uuid

import pytest

from orderly.stack import servers


def test_cluster_id_is_22_url_safe_characters_that_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first UUID encodes to an id starting with "-" (0xf8… → "-"): it must be skipped for the next one.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=bytes(16))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    drawn = iter([dashed, plain])
    monkeypatch.setattr(servers.uuid, "uuid4", lambda: next(drawn))
    cluster_id = servers.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
    assert not cluster_id.startswith("-")
