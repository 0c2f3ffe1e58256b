"""Oversized bodies: over 64 KiB (with or without Content-Length, or inflating past it) is 413; exactly
64 KiB validly signed is accepted.
The service and the signers: tests/support/hostile.py."""

from collections.abc import AsyncIterator
from typing import Any

import pytest

from call_ledger.store import Store
from call_ledger.web.base import MAX_BODY
from tests.support.hostile import ROUTE_IDS, ROUTES, padded_request, platform_req, stream_length, valid_request

# -- 4. oversized bodies ----------------------------------------------------------------------------------------

async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_body_over_64_kib_is_413_with_or_without_content_length(client: Any, store: Store, source: str,
                                                                      method: str) -> None:
    req = valid_request(source, method)  # signed headers: only the size is wrong
    body = b"x" * (MAX_BODY + 1)
    with_length = await client.request(method, req.url, headers=req.headers, data=body)
    chunked = await client.request(method, req.url, headers=req.headers, data=_chunks(body))
    for response in (with_length, chunked):
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert with_length.request_info.headers.get("Content-Length") == str(MAX_BODY + 1)
    assert "Content-Length" not in chunked.request_info.headers
    assert await stream_length(store) == 0


@pytest.mark.parametrize(("source", "method"), ROUTES, ids=ROUTE_IDS)
async def test_body_of_exactly_64_kib_validly_signed_is_accepted(client: Any, store: Store, source: str,
                                                                 method: str) -> None:
    req = padded_request(source, method, MAX_BODY)
    assert len(req.body) == MAX_BODY
    with_length = await req.send(client)
    assert with_length.status == 200, await with_length.text()
    chunked = await client.request(method, req.url, headers=req.headers, data=_chunks(req.body))
    assert chunked.status == 200, await chunked.text()
    assert await stream_length(store) == 2


async def test_compressed_body_that_inflates_past_64_kib_is_413(client: Any, store: Store) -> None:
    import gzip

    bomb = gzip.compress(b" " * (4 * 1024 * 1024))  # 4 MiB of spaces in a few KiB
    assert len(bomb) < MAX_BODY
    response = await client.post("/webhooks/platform", data=bomb,
                                 headers={**platform_req(bomb, "msg_bomb").headers, "Content-Encoding": "gzip"})
    assert response.status == 413, await response.text()
    assert await stream_length(store) == 0
