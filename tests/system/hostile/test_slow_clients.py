"""A slow client: one that stalls mid-body gets 408 and nothing is stored.
The service and the signers: tests/support/hostile.py."""


import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.store import Store
from tests.support.hostile import (
    ALL_SOURCES,
    SOURCES,
    platform_req,
    platform_status,
    raw_exchange,
    request_head,
    stream_length,
    valid_request,
)
from tests.support.settings import make_settings

# -- 5. a slow client --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
async def test_a_client_that_stalls_mid_body_gets_408_and_nothing_is_stored(store: Store, source: str) -> None:
    settings = make_settings(read_timeout_s=0.5, **ALL_SOURCES)
    if source == "platform":  # exactly 100 bytes, as the provider would sign them
        body = platform_status(call_sid="CA_slow")
        body += b" " * (100 - len(body))
        req = platform_req(body)
    else:
        req = valid_request(source)
    assert req.body
    async with TestServer(create_app(settings, "worker", store, run_consumer=False), host="127.0.0.1") as server:
        with capture_logs():
            stalls = [req.body[: len(req.body) // 2]] + ([b""] if source == "platform" else [])  # part, or none
            for sent in stalls:
                answer, waited = await raw_exchange(server.port, request_head(req, len(req.body)), sent)
                status_line, _, rest = answer.partition(b"\r\n")
                assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b'"error":"request_timeout"' in rest
                assert 0.3 < waited < 4.0
    assert await stream_length(store) == 0
