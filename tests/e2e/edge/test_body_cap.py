"""A body over the cap gets 413 from a running API over a real socket, before the API reads it.

loms (every route in FastAPI) and items (``POST /item/create`` is a fast route) are served by granian as in
production, with the default cap of 64 KiB. A declared 50 MB body is answered after 1 KiB of it was sent; a chunked
one is answered while it is still being sent, long before its end.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from orderly.platform.settings import DEFAULT_MAX_BODY_BYTES
from tests.integration.items.support import items_env, migrated
from tests.loms_support import prepare
from tests.plumbing import Namespace, Processes, free_port

DECLARED = 50 * 1024 * 1024
CHUNK = 8 * 1024


@pytest.fixture(scope="module")
async def apis(namespace: Namespace) -> dict[str, dict[str, str]]:
    loms = await prepare(namespace, "bodycap")
    items = await migrated(await namespace.settings("bodycap_items"))
    return {"/order/create": loms.env, "/item/create?campaignId=1": items_env(items)}


@pytest.fixture(scope="module")
def ports(apis: dict[str, dict[str, str]]) -> Iterator[dict[str, int]]:
    procs = Processes()
    ports = {"/order/create": free_port(), "/item/create?campaignId=1": free_port()}
    services = {"/order/create": "loms", "/item/create?campaignId=1": "items"}
    try:
        for target, port in ports.items():
            procs.start(services[target], "api", "--port", str(port), env=apis[target]).wait_http_ready(port)
        yield ports
    finally:
        procs.stop_all()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one HTTP/1.1 response with a Content-Length."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def request_head(target: str, port: int, framing: str) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def assert_refused(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert "x-request-id" in headers
    message = f"the request body is larger than {DEFAULT_MAX_BODY_BYTES} bytes"
    assert body == {"error": "body_too_large", "message": message, "fields": [{"field": "body", "message": message}]}


@pytest.mark.parametrize("target", ["/order/create", "/item/create?campaignId=1"])
def test_a_declared_50_mb_body_is_refused_with_413_before_it_is_sent(target: str, ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports[target]), timeout=10) as sock:
        sock.sendall(request_head(target, ports[target], f"Content-Length: {DECLARED}"))
        sock.sendall(b'{"user": 1, "items": [' + b" " * 1000)  # 1 KiB of the 50 MB, then we wait for the answer
        assert_refused(*read_response(sock))


@pytest.mark.parametrize("target", ["/order/create", "/item/create?campaignId=1"])
def test_a_chunked_body_is_refused_with_413_while_it_is_still_being_sent(target: str, ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports[target]), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(request_head(target, ports[target], "Transfer-Encoding: chunked"))
        sent = 0
        chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
        while sent < DECLARED and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: the answer is waiting in our receive buffer
            sent += CHUNK
        assert sent < 8 * 1024 * 1024, f"no answer after {sent} bytes of a chunked body"
        assert_refused(*read_response(sock))
