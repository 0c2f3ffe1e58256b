"""Where an endpoint may point (call_ledger/web/ssrf.py): literal addresses and names resolving to loopback,
private, link-local or multicast addresses are refused unless private addresses are allowed; so is a name that
does not resolve. DNS is the loop's getaddrinfo, replaced here where a test needs a name to resolve to chosen
addresses (`localhost` resolves for real, from /etc/hosts)."""

import asyncio
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from call_ledger.web.ssrf import AddressRefused, SafeResolver, host_refusal, url_refusal

PUBLIC = "93.184.215.14"


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """The running loop's getaddrinfo answering `answers` (anything else: not found); the names asked, in order."""
    asked: list[str] = []
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: Any, **_: Any) -> list[Any]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1/hook", "loopback"),
    ("https://127.0.0.1:8443/hook", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.10/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8080/", "loopback"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://224.0.0.1/", "multicast"),
    ("http://0.0.0.0/", "private"),
])
async def test_literal_addresses_are_refused_unless_private_is_allowed(url: str, kind: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {})
    reason = await url_refusal(url, allow_private=False)
    assert reason is not None and kind in reason
    assert await url_refusal(url, allow_private=True) is None
    assert asked == []  # a literal address needs no DNS


async def test_a_public_address_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    assert await url_refusal(f"https://{PUBLIC}/x", allow_private=False) is None
    assert await url_refusal("https://hooks.example.com/in?token=abc", allow_private=False) is None


async def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    reason = await url_refusal("http://localhost:9000/hook", allow_private=False)
    assert reason is not None and "loopback" in reason and "localhost" in reason
    assert await url_refusal("http://localhost:9000/hook", allow_private=True) is None


async def test_a_name_is_refused_if_any_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"rebind.example": [PUBLIC, "10.0.0.7"], "meta.example": ["169.254.169.254"],
                                   "v6.example": ["fe80::1%eth0"]})
    for host, kind in (("rebind.example", "private"), ("meta.example", "link-local"), ("v6.example", "link-local")):
        reason = await url_refusal(f"https://{host}/hook?secret=s3cr3t", allow_private=False)
        assert reason is not None and kind in reason and "s3cr3t" not in reason
    assert asked == ["rebind.example", "meta.example", "v6.example"]


async def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"empty.example": []})
    for host in ("nowhere.example", "empty.example"):
        assert await url_refusal(f"https://{host}/", allow_private=False) == f"{host} does not resolve"


async def test_slow_dns_is_refused_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def stuck(*_: Any, **__: Any) -> list[Any]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(loop, "getaddrinfo", stuck)
    monkeypatch.setattr("call_ledger.web.ssrf.RESOLVE_TIMEOUT_S", 0.05)
    assert await url_refusal("https://slow.example/", allow_private=False) == "slow.example did not resolve in time"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://h/", "https:///nohost"])
async def test_only_http_and_https(url: str) -> None:
    assert await url_refusal(url, allow_private=False) is not None
    assert await url_refusal(url, allow_private=True) is not None


def test_host_refusal_checks_literal_addresses_only() -> None:
    assert host_refusal("127.0.0.1") is not None and host_refusal("::1") is not None
    assert host_refusal(PUBLIC) is None and host_refusal("example.com") is None


class Answers(AbstractResolver):
    """A resolver that answers these addresses for every host (the inner one SafeResolver wraps)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
                for a in self.addresses]

    async def close(self) -> None:
        self.closed = True


async def test_safe_resolver_refuses_a_rebound_name() -> None:
    """At delivery, a name that now resolves to a refused address fails to connect (an OSError), naming why."""
    assert [r["host"] for r in await SafeResolver(False, Answers([PUBLIC])).resolve("h.example", 443)] == [PUBLIC]
    for addresses in (["127.0.0.1"], [PUBLIC, "10.9.8.7"], ["169.254.169.254"], ["::1"]):
        with pytest.raises(AddressRefused, match=r"refused to connect to h\.example"):
            await SafeResolver(False, Answers(addresses)).resolve("h.example", 443)
        assert len(await SafeResolver(True, Answers(addresses)).resolve("h.example", 443)) == len(addresses)
    inner = Answers([PUBLIC])
    await SafeResolver(False, inner).close()
    assert inner.closed


async def test_safe_resolver_in_a_client_session() -> None:
    """Wired into aiohttp: a request to `localhost` fails before any connection is made."""
    import aiohttp

    resolver = SafeResolver(False)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.post("http://localhost:9/never", data=b"{}")
    assert isinstance(refused.value.os_error, AddressRefused) and "loopback" in str(refused.value.os_error)
