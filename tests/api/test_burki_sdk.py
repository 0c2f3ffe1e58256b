"""Burki's official Python SDK (`burki` on PyPI), unchanged, against a served call-ledger
(SPEC §9): calls.list, get, get_by_sid, get_count, get_stats, get_analytics, search, export
and their _async forms. The sync forms run in a thread (they block on httpx)."""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from burki import BurkiClient
from burki.exceptions import AuthenticationError, NotFoundError, ValidationError

from call_ledger.app import create_app
from call_ledger.settings import Settings
from call_ledger.store import Store
from tests.support.calls import ADMIN, BASE_US, ORG7, TOKENS, call, load
from tests.support.settings import make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=TOKENS)


@pytest.fixture
async def base_url(aiohttp_server: Any, settings: Settings, store: Store) -> str:
    server = await aiohttp_server(create_app(settings, "api", store))
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def calls(store: Store, settings: Settings) -> dict[str, Any]:
    now = int(time.time() * 1_000_000)
    events = call("CA-sdk-1", BASE_US, org=7, assistant=3, name="Sales", customer="+15551112222", cost=100_000_000)
    events += call("CA-sdk-2", BASE_US + 60_000_000, status="failed", duration=None, org=7, assistant=3)
    events += call("CA-sdk-3", now - 5_000_000, status="ongoing", duration=None, assistant=4, name="Helper")
    await load(store, settings, events)
    return {}


async def test_list_get_and_get_by_sid(base_url: str, calls: Any) -> None:
    client = BurkiClient(api_key=ADMIN, base_url=base_url)
    listed = await asyncio.to_thread(client.calls.list)
    assert [c.call_sid for c in listed] == ["CA-sdk-3", "CA-sdk-2", "CA-sdk-1"]
    first = listed[2]
    assert (first.status, first.assistant_id, first.assistant_name, first.duration) == ("completed", 3, "Sales", 60)
    assert first.started_at == datetime.fromtimestamp(BASE_US / 1e6, tz=UTC)
    assert [c.call_sid for c in await asyncio.to_thread(client.calls.list, status="failed")] == ["CA-sdk-2"]
    assert [c.call_sid for c in await asyncio.to_thread(client.calls.list, skip=1, limit=1)] == ["CA-sdk-2"]
    assert [c.call_sid for c in await asyncio.to_thread(
        client.calls.list, customer_phone="1112222", min_duration=10)] == ["CA-sdk-1"]
    # The SDK sends naive datetimes' isoformat(): read as UTC.
    naive = datetime.fromtimestamp(BASE_US / 1e6 + 30, tz=UTC).replace(tzinfo=None)
    assert [c.call_sid for c in await asyncio.to_thread(client.calls.list, date_from=naive)] == ["CA-sdk-3",
                                                                                                "CA-sdk-2"]
    got = await asyncio.to_thread(client.calls.get, first.id)
    assert got == first == await asyncio.to_thread(client.calls.get_by_sid, "CA-sdk-1")
    with pytest.raises(NotFoundError):
        await asyncio.to_thread(client.calls.get, 10**9)
    with pytest.raises(ValidationError):
        await asyncio.to_thread(client.calls.list, limit=5000)
    client.close()


async def test_async_forms(base_url: str, calls: Any) -> None:
    async with BurkiClient(api_key=ADMIN, base_url=base_url) as client:
        listed = await client.calls.list_async(assistant_id=3)
        assert [c.call_sid for c in listed] == ["CA-sdk-2", "CA-sdk-1"]
        assert (await client.calls.get_async(listed[0].id)).call_sid == "CA-sdk-2"
        assert (await client.calls.get_by_sid_async("CA-sdk-1")).id == listed[1].id
        assert await client.calls.get_count_async(status="completed") == 1
        stats = await client.calls.get_stats_async()
        assert (stats.total_calls, stats.ongoing_calls, stats.failed_calls) == (3, 1, 1)
        analytics = await client.calls.get_analytics_async("1d")
        assert analytics.period == "1d" and analytics.total_calls in (0, 1)  # CA-sdk-3: 5 s ago (midnight UTC)
        assert [c.call_sid for c in await client.calls.search_async("helper")] == ["CA-sdk-3"]
        exported = await client.calls.export_async(format="json", status="failed")
        assert [r["call_sid"] for r in exported] == ["CA-sdk-2"]


async def test_count_stats_analytics_search_export(base_url: str, calls: Any) -> None:
    client = BurkiClient(api_key=ADMIN, base_url=base_url)
    assert await asyncio.to_thread(client.calls.get_count) == 3
    assert await asyncio.to_thread(client.calls.get_count, assistant_id=3, status="failed") == 1
    stats = await asyncio.to_thread(client.calls.get_stats)
    assert (stats.total_calls, stats.completed_calls, stats.average_duration, stats.total_duration) == (3, 1, 30.0, 60)
    analytics = await asyncio.to_thread(client.calls.get_analytics, "90d")
    assert analytics.period == "90d" and analytics.calls_by_status is not None
    assert analytics.total_calls == 1 + (BASE_US / 1e6 > time.time() - 89 * 86400) * 2
    found = await asyncio.to_thread(client.calls.search, "sdk-", 2)
    assert [c.call_sid for c in found] == ["CA-sdk-3", "CA-sdk-2"]
    with pytest.raises(ValidationError):
        await asyncio.to_thread(client.calls.search, "ab")
    exported = await asyncio.to_thread(client.calls.export, "json")
    assert [r["call_sid"] for r in exported] == ["CA-sdk-3", "CA-sdk-2", "CA-sdk-1"]
    # CSV: the SDK parses every answer as JSON and gives None for a CSV body; the call itself
    # succeeds (the bytes are checked over raw HTTP in test_calls_api).
    assert await asyncio.to_thread(client.calls.export) is None
    client.close()


async def test_a_scoped_key_sees_its_organization_only(base_url: str, calls: Any) -> None:
    async with BurkiClient(api_key=ORG7, base_url=base_url) as client:
        assert [c.call_sid for c in await client.calls.list_async()] == ["CA-sdk-2", "CA-sdk-1"]
        assert await client.calls.get_count_async() == 2
        assert (await client.calls.get_stats_async()).total_calls == 2
        with pytest.raises(NotFoundError):
            await client.calls.get_by_sid_async("CA-sdk-3")
        assert await client.calls.search_async("helper") == []
    async with BurkiClient(api_key="wrong", base_url=base_url) as client:
        with pytest.raises(AuthenticationError):
            await client.calls.list_async()
