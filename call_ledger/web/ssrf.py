"""Where a webhook endpoint may point (SPEC §15): at public addresses only, unless
LEDGER_OUTBOUND_ALLOW_PRIVATE=true. Otherwise anyone holding an API token could make this service post to its
own Redis, a cloud metadata service (169.254.169.254) or anything else on its private network (SSRF).

Checked twice: when an endpoint is created (`url_refusal`, a 422), and at each delivery (`SafeResolver`, the
delivery session's resolver), because a name that resolved to a public address yesterday may resolve to
127.0.0.1 today (DNS rebinding). Both refuse a host if ANY of its addresses is refused
(`core.outbound.address_refused`): a client may connect to any of them.

aiohttp does not ask its resolver about a host that is a literal IP address, so `SafeResolver` never sees one:
delivery checks such a host itself (`host_refusal`, no DNS), or relies on the check at creation (a literal
address cannot be rebound; only a change of LEDGER_OUTBOUND_ALLOW_PRIVATE makes it refused later).
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from call_ledger.core.outbound import address_refused

# Creating an endpoint waits at most this long for DNS; a name that takes longer is refused (the client may
# try again), so a slow resolver cannot hold a request past the store's own bound.
RESOLVE_TIMEOUT_S = 3.0


class AddressRefused(OSError):
    """A connection refused by `SafeResolver`: aiohttp raises it wrapped (ClientConnectorError.os_error), so that
    delivery counts it as `refused_address`, not as a connection error of the receiver's."""


def _address(text: str) -> str:
    """An address as getaddrinfo gives it, without an IPv6 zone (`fe80::1%eth0`), which ipaddress refuses."""
    return text.partition("%")[0]


def host_refusal(host: str) -> str | None:
    """Why a literal IP host is refused, or None: None too for a name (its addresses need DNS: `url_refusal`)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return address_refused(host)


async def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why an endpoint may not point at `url`, or None when it may: not http(s); or (unless `allow_private`) a
    literal address that is refused, a host that does not resolve (in RESOLVE_TIMEOUT_S), or a host with any
    address refused. The reason names the address, never the URL (which may carry a token in its query)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "url must be an http or https URL with a host"
    if allow_private:
        return None
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address_refused(host)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, parts.port or (443 if parts.scheme.lower() == "https" else 80),
                                           type=socket.SOCK_STREAM)
    except TimeoutError:
        return f"{host} did not resolve in time"
    except (OSError, UnicodeError):  # socket.gaierror is an OSError; an over-long label an UnicodeError
        return f"{host} does not resolve"
    addresses = sorted({_address(str(info[4][0])) for info in infos})
    if not addresses:
        return f"{host} does not resolve"
    for address in addresses:
        reason = address_refused(address)
        if reason:
            return f"{host} resolves to a refused address: {reason}"
    return None


class SafeResolver(AbstractResolver):
    """aiohttp's resolver (or `inner`), refusing a host any of whose addresses is refused: the connection fails
    with AddressRefused (an OSError) naming the reason; delivery tries it again later, as after a connection
    error (SPEC §15). With `allow_private` it only passes the answers on."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                reason = address_refused(_address(result["host"]))
                if reason:
                    raise AddressRefused(f"refused to connect to {host}: {reason}")
        return results

    async def close(self) -> None:
        await self.inner.close()
