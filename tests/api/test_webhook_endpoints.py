"""The endpoints API of SPEC §15 through raw HTTP on fake Redis: every route's answers and 422s, tenants (another
organization's endpoint is 404 on every route), SSRF refusals with and without LEDGER_OUTBOUND_ALLOW_PRIVATE, the
per-organization limit, secrets never in a list, a read or a log line, and rotation. The delivery part
(`store.deliveries`) is a recording fake here: these tests hold the routes to its interface."""

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from call_ledger.app import create_app
from call_ledger.core.endpoints import ROTATION_OVERLAP_MS
from call_ledger.core.standard_webhooks import signing_key
from call_ledger.settings import Settings
from call_ledger.store import Store
from tests.support.calls import ADMIN, ORG7, ORG8, TOKENS, auth
from tests.support.settings import make_settings

BASE = "/api/v1/webhook-endpoints"
PUBLIC_URL = "https://93.184.215.14/hooks/ledger"
ISO_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")


@dataclass
class Page:
    attempts: list[dict[str, Any]]
    next: str | None


@dataclass
class FakeDeliveries:
    """`store.deliveries` as the routes use it (call_ledger/store/deliveries.py is the delivery part's)."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)

    async def attempts(self, endpoint_id: str, after: str | None, limit: int) -> Page:
        self.calls.append(("attempts", endpoint_id, after, limit))
        if after == "bad-cursor":
            raise ValueError("not a cursor")
        attempt = {"message_id": "msg_" + "0" * 32, "type": "call.ended", "call_sid": "CA1", "attempt": 1,
                   "status_code": 500, "error": None, "at": "2026-11-24T10:00:00Z",
                   "next_attempt_at": "2026-11-24T10:00:05Z"}
        return Page([attempt], "1764000000000-0" if after is None else None)

    async def recover(self, endpoint_id: str, since_ms: int, now_ms: int) -> int:
        self.calls.append(("recover", endpoint_id, since_ms))
        return 3

    async def drop(self, endpoint_id: str) -> None:
        self.calls.append(("drop", endpoint_id))


@pytest.fixture
def settings() -> Settings:
    return make_settings(api_tokens=TOKENS, max_endpoints=3)


@pytest.fixture
def deliveries(store: Store) -> FakeDeliveries:
    fake = FakeDeliveries()
    store.deliveries = fake  # type: ignore[assignment]  # the real one is tested in tests/store/test_deliveries.py
    return fake


@pytest.fixture
async def api(aiohttp_client: Any, settings: Settings, store: Store, deliveries: FakeDeliveries) -> Any:
    return await aiohttp_client(create_app(settings, "api", store))


async def create(api: Any, token: str = ADMIN, status: int = 201, **body: Any) -> dict[str, Any]:
    response = await api.post(BASE, headers=auth(token), json={"url": PUBLIC_URL, **body})
    payload: dict[str, Any] = await response.json()
    assert response.status == status, payload
    return payload


async def test_create_answers_201_with_a_secret(api: Any) -> None:
    before = time.time()
    body = await create(api, ORG7, events=["call.finalized", "call.ended"], description="billing")
    assert list(body) == ["id", "url", "events", "description", "organization_id", "secret", "created_at"]
    assert re.fullmatch(r"ep_[0-9a-f]{24}", body["id"])
    assert body["url"] == PUBLIC_URL and body["events"] == ["call.finalized", "call.ended"]
    assert body["description"] == "billing" and body["organization_id"] == 7
    assert len(signing_key(body["secret"])) >= 24 and body["secret"].startswith("whsec_")
    assert ISO_SECOND.fullmatch(body["created_at"]) and body["created_at"] >= time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1))
    # Defaults: every event, no description; an unscoped token's endpoint is of no organization.
    admin = await create(api)
    assert admin["events"] == ["call.ended", "call.finalized", "call.revised"]
    assert admin["description"] == "" and admin["organization_id"] is None
    assert admin["secret"] != body["secret"]


async def test_list_and_get_never_show_a_secret(api: Any, store: Store) -> None:
    mine = await create(api, ORG7)
    theirs = await create(api, ORG8)
    admins = await create(api)
    response = await api.get(BASE, headers=auth(ORG7))
    text = await response.text()
    assert response.status == 200 and "whsec_" not in text and "secret" not in text
    public = {k: v for k, v in mine.items() if k != "secret"}
    assert await response.json() == {"items": [public], "total": 1}
    everything = await (await api.get(BASE, headers=auth(ADMIN))).json()
    assert [item["id"] for item in everything["items"]] == [mine["id"], theirs["id"], admins["id"]]
    assert everything["total"] == 3
    one = await api.get(f"{BASE}/{mine['id']}", headers=auth(ORG7))
    assert one.status == 200 and await one.json() == public and "whsec_" not in await one.text()
    assert (await api.get(f"{BASE}/{mine['id']}", headers=auth(ADMIN))).status == 200  # unscoped: every one


ROUTES = [("get", ""), ("delete", ""), ("post", "/rotate-secret"), ("get", "/attempts"), ("post", "/recover")]


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_another_organizations_endpoint_is_404_on_every_route(api: Any, deliveries: FakeDeliveries,
                                                                     method: str, suffix: str) -> None:
    theirs = await create(api, ORG8)
    admins = await create(api)  # of no organization: nobody's but the unscoped tokens'
    for endpoint_id in (theirs["id"], admins["id"], "ep_" + "0" * 24, "not-an-id", "ep_" + "A" * 24):
        response = await getattr(api, method)(f"{BASE}/{endpoint_id}{suffix}", headers=auth(ORG7),
                                              json={"since": "2026-11-24T10:00:00Z"})
        assert response.status == 404, (endpoint_id, await response.text())
        assert (await response.json())["error"] == "not_found"
    assert deliveries.calls == []  # nothing reached the delivery part
    # ...and all is as it was for the owners.
    assert (await api.get(f"{BASE}/{theirs['id']}", headers=auth(ORG8))).status == 200
    assert len((await (await api.get(BASE, headers=auth(ADMIN))).json())["items"]) == 2


@pytest.mark.parametrize(("method", "suffix"), [("post", None), ("get", None), *ROUTES])
async def test_every_route_needs_a_token(api: Any, method: str, suffix: str | None) -> None:
    mine = await create(api, ORG7)
    path = BASE if suffix is None else f"{BASE}/{mine['id']}{suffix}"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await getattr(api, method)(path, headers=headers, json={"url": PUBLIC_URL})
        assert response.status == 401 and (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize(("body", "message"), [
    ({}, "url is required"),
    ({"url": ""}, "url must be a non-empty string"),
    ({"url": 5}, "url must be a non-empty string"),
    ({"url": "ftp://93.184.215.14/x"}, "http or https"),
    ({"url": "93.184.215.14/x"}, "http or https"),
    ({"url": "https://user:pw@93.184.215.14/x"}, "credentials"),
    ({"url": "https://token@93.184.215.14/x"}, "credentials"),
    ({"url": "https://93.184.215.14/x y"}, "spaces or control characters"),
    ({"url": "https://93.184.215.14/\nx"}, "spaces or control characters"),
    ({"url": "https:///x"}, "url must name a host"),
    ({"url": "https://93.184.215.14:99999/x"}, "invalid port"),
    ({"url": "https://93.184.215.14/" + "a" * 2030}, "at most 2048"),
    ({"url": PUBLIC_URL, "events": []}, "non-empty list"),
    ({"url": PUBLIC_URL, "events": "call.ended"}, "non-empty list"),
    ({"url": PUBLIC_URL, "events": ["call.started"]}, "events may hold only"),
    ({"url": PUBLIC_URL, "events": [1]}, "events may hold only"),
    ({"url": PUBLIC_URL, "events": ["call.ended", "call.ended"]}, "call.ended twice"),
    ({"url": PUBLIC_URL, "description": "d" * 257}, "at most 256"),
    ({"url": PUBLIC_URL, "description": None}, "description must be a string"),
    ({"url": PUBLIC_URL, "secret": "whsec_mine"}, "unknown field: secret"),
    ({"url": PUBLIC_URL, "organization_id": 8, "id": "ep_x"}, "unknown fields: id, organization_id"),
])
async def test_create_refuses_a_body_not_of_its_form(api: Any, store: Store, body: dict[str, Any],
                                                     message: str) -> None:
    response = await api.post(BASE, headers=auth(ORG7), json=body)
    payload = await response.json()
    assert response.status == 422 and payload["error"] == "invalid_body" and message in payload["detail"], payload
    assert await store.endpoints.all() == []


async def test_create_accepts_the_bounds(api: Any) -> None:
    url = "https://93.184.215.14/" + "a" * (2048 - len("https://93.184.215.14/"))
    assert (await create(api, url=url, description="d" * 256, events=["call.revised"]))["url"] == url


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"[1,2]", b'"url"'])
async def test_create_refuses_what_is_not_a_json_object(api: Any, raw: bytes) -> None:
    response = await api.post(BASE, headers={**auth(), "Content-Type": "application/json"}, data=raw)
    assert response.status in (400, 422)
    assert (await response.json())["error"] == ("malformed_body" if response.status == 400 else "invalid_body")


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("https://10.0.0.5/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]/hook", "loopback"),
    ("http://localhost:9000/hook", "loopback"),  # a name resolving to loopback (/etc/hosts)
])
async def test_refused_addresses_are_422_unless_private_is_allowed(aiohttp_client: Any, store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch, url: str,
                                                                   kind: str) -> None:
    monkeypatch.delenv("LEDGER_OUTBOUND_ALLOW_PRIVATE", raising=False)
    api = await aiohttp_client(create_app(make_settings(api_tokens=TOKENS), "api", store))
    response = await api.post(BASE, headers=auth(ORG7), json={"url": url})
    payload = await response.json()
    assert response.status == 422 and payload["error"] == "invalid_body", payload
    assert "url refused" in payload["detail"] and kind in payload["detail"]
    assert await store.endpoints.all() == []
    # The environment variable lifts it (tests and private networks).
    monkeypatch.setenv("LEDGER_OUTBOUND_ALLOW_PRIVATE", "true")
    allowed = await aiohttp_client(create_app(Settings(api_tokens=TOKENS), "api", store))
    response = await allowed.post(BASE, headers=auth(ORG7), json={"url": url})
    assert response.status == 201 and (await response.json())["url"] == url


async def test_a_name_that_resolves_to_a_private_address_is_refused(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import socket

    async def getaddrinfo(host: str, port: Any, **_: Any) -> list[Any]:
        addresses = {"hooks.example.com": ["93.184.215.14"], "rebind.example.com": ["93.184.215.14", "10.1.1.1"]}
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert (await create(api, url="https://hooks.example.com/in"))["url"] == "https://hooks.example.com/in"
    for url, why in (("https://rebind.example.com/in", "private"), ("https://nowhere.example.com/", "not resolve")):
        response = await api.post(BASE, headers=auth(), json={"url": url})
        assert response.status == 422 and why in (await response.json())["detail"]


async def test_at_most_max_endpoints_per_organization(api: Any) -> None:
    for _ in range(3):
        await create(api, ORG7)
    refused = await create(api, ORG7, status=409)
    assert refused["error"] == "too_many_endpoints" and "LEDGER_MAX_ENDPOINTS" in refused["detail"]
    await create(api, ORG8)  # another organization's own count
    for _ in range(3):
        await create(api, ADMIN)  # the unscoped tokens' endpoints count as one organization
    await create(api, ADMIN, status=409)
    # Deleting one makes room.
    mine = (await (await api.get(BASE, headers=auth(ORG7))).json())["items"][0]
    assert (await api.delete(f"{BASE}/{mine['id']}", headers=auth(ORG7))).status == 204
    await create(api, ORG7)


async def test_delete_drops_the_deliveries(api: Any, deliveries: FakeDeliveries, store: Store) -> None:
    mine = await create(api, ORG7)
    response = await api.delete(f"{BASE}/{mine['id']}", headers=auth(ORG7))
    assert response.status == 204 and await response.read() == b""
    assert deliveries.calls == [("drop", mine["id"])]
    assert await store.endpoints.get(mine["id"]) is None
    assert (await api.get(f"{BASE}/{mine['id']}", headers=auth(ORG7))).status == 404
    assert (await api.delete(f"{BASE}/{mine['id']}", headers=auth(ORG7))).status == 404
    # An unscoped token may delete any organization's.
    theirs = await create(api, ORG8)
    assert (await api.delete(f"{BASE}/{theirs['id']}", headers=auth(ADMIN))).status == 204


async def test_rotation_keeps_both_secrets_valid_for_24_hours(api: Any, store: Store) -> None:
    mine = await create(api, ORG7)
    response = await api.post(f"{BASE}/{mine['id']}/rotate-secret", headers=auth(ORG7))
    rotated = await response.json()
    assert response.status == 200 and rotated["secret"] != mine["secret"]
    assert {k: v for k, v in rotated.items() if k != "secret"} == {k: v for k, v in mine.items() if k != "secret"}
    endpoint = await store.endpoints.get(mine["id"])
    assert endpoint is not None
    now = int(time.time() * 1000)
    # What delivery signs with, newest first: both for a day, then the new one only.
    assert endpoint.current_secrets(now) == [rotated["secret"], mine["secret"]]
    assert endpoint.current_secrets(now + ROTATION_OVERLAP_MS - 60_000) == [rotated["secret"], mine["secret"]]
    assert endpoint.current_secrets(now + ROTATION_OVERLAP_MS + 60_000) == [rotated["secret"]]
    assert "secret" not in await (await api.get(f"{BASE}/{mine['id']}", headers=auth(ORG7))).text()


async def test_attempts_page_through_the_delivery_log(api: Any, deliveries: FakeDeliveries) -> None:
    mine = await create(api, ORG7)
    response = await api.get(f"{BASE}/{mine['id']}/attempts", headers=auth(ORG7))
    body = await response.json()
    assert response.status == 200 and list(body) == ["attempts", "next"]
    assert body["attempts"][0]["message_id"] == "msg_" + "0" * 32 and body["next"] == "1764000000000-0"
    second = await (await api.get(f"{BASE}/{mine['id']}/attempts", headers=auth(ORG7),
                                  params={"after": body["next"], "limit": "5"})).json()
    assert second["next"] is None
    assert deliveries.calls == [("attempts", mine["id"], None, 100), ("attempts", mine["id"], "1764000000000-0", 5)]
    for params, name in (({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
                         ({"after": "bad-cursor"}, "after"), ({"after": "a/b"}, "after"),
                         ({"after": "1" * 129}, "after")):
        response = await api.get(f"{BASE}/{mine['id']}/attempts", headers=auth(ORG7), params=params)
        payload = await response.json()
        assert response.status == 422 and payload["error"] == "invalid_parameter" and name in payload["detail"]


async def test_recover_since_a_time(api: Any, deliveries: FakeDeliveries) -> None:
    mine = await create(api, ORG7)
    response = await api.post(f"{BASE}/{mine['id']}/recover", headers=auth(ORG7),
                              json={"since": "2026-11-24T10:00:00+01:00"})
    assert response.status == 202 and await response.json() == {"recovered": 3}
    nine_utc = int(datetime(2026, 11, 24, 9, tzinfo=UTC).timestamp() * 1000)
    assert deliveries.calls == [("recover", mine["id"], nine_utc)]
    for body, error in (({}, "invalid_body"), ({"since": "yesterday"}, "invalid_body"),
                        ({"since": 5}, "invalid_body"), ({"since": "2026-11-24T10:00:00Z", "x": 1}, "invalid_body"),
                        ([], "invalid_body")):
        response = await api.post(f"{BASE}/{mine['id']}/recover", headers=auth(ORG7), json=body)
        assert response.status == 422 and (await response.json())["error"] == error
    response = await api.post(f"{BASE}/{mine['id']}/recover", headers=auth(ORG7), data=b"{")
    assert response.status == 400
    assert len(deliveries.calls) == 1


async def test_secrets_never_reach_the_logs(api: Any) -> None:
    with capture_logs() as logs:
        mine = await create(api, ORG7)
        rotated = await (await api.post(f"{BASE}/{mine['id']}/rotate-secret", headers=auth(ORG7))).json()
        await api.get(BASE, headers=auth(ORG7))
        await api.post(f"{BASE}/{mine['id']}/recover", headers=auth(ORG7), json={"since": "2026-01-01T00:00:00Z"})
        await api.delete(f"{BASE}/{mine['id']}", headers=auth(ORG7))
    events = [entry["event"] for entry in logs]
    assert events == ["webhook_endpoint_created", "webhook_secret_rotated", "webhook_endpoint_recover",
                      "webhook_endpoint_deleted"]
    text = repr(logs)
    for secret in (mine["secret"], rotated["secret"]):
        assert secret not in text and secret.removeprefix("whsec_") not in text
    assert PUBLIC_URL not in text  # a URL may carry a token in its query
    assert all(entry["endpoint_id"] == mine["id"] and entry["organization_id"] == 7 for entry in logs)


async def test_redis_down_is_503(api: Any, store: Store) -> None:
    mine = await create(api, ORG7)

    async def broken(*_: Any, **__: Any) -> Any:
        raise ConnectionError("down")

    store.redis.hget = broken
    store.redis.hgetall = broken
    store.redis.execute_command = broken
    for method, path in (("post", BASE), ("get", BASE), ("get", f"{BASE}/{mine['id']}")):
        response = await getattr(api, method)(path, headers=auth(ORG7), json={"url": PUBLIC_URL})
        assert response.status == 503, (method, path, await response.text())
