"""Outbound call events (SPEC §15): which messages a change of a call makes, what a message says, when a
failed delivery is tried again, and which addresses an endpoint may not point at.

Pure: the store writes the messages in the same commit as the change (an outbox) and the delivery loop
sends them; both take their decisions from here, so that the commit script's rules have a reference model
that the property tests hold them to.
"""

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

import orjson

MessageType = Literal["call.ended", "call.finalized", "call.revised"]
MESSAGE_TYPES: tuple[MessageType, ...] = ("call.ended", "call.finalized", "call.revised")
DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True, slots=True)
class Finality:
    """What a call has announced so far: `ended` once its status first became terminal; `revision` 0 until
    the call is finalized, 1 when it is, and one more for each change after that."""

    ended: bool = False
    revision: int = 0


Audience = Literal["all", "organization", "unscoped"]
"""Which endpoints a message is for, among those subscribed to its type: `all`, those of no organization and
those of the call's; `organization`, only the call's organization's (what they missed when the call moved to
it); `unscoped`, only those of no organization."""
AUDIENCES: tuple[Audience, ...] = ("all", "organization", "unscoped")


class Message(NamedTuple):
    """One message a change makes: its type, its revision and which endpoints it is for."""

    type: MessageType
    revision: int
    audience: Audience = "all"


@dataclass(frozen=True, slots=True)
class Announcement:
    """A change's effect on a call's messages: the finality it leaves, and the messages it makes."""

    finality: Finality
    messages: tuple[Message, ...]


def after_change(finality: Finality, terminal: bool, organization_changed: bool = False,
                 record_changed: bool = True) -> Announcement:
    """A commit changed the call's record, or its organization (`terminal` is its status now).

    A changed record: `call.ended` if the status is terminal for the first time, `call.revised` (one revision
    more) if the call was already finalized. A call whose end was already announced and that moves to another
    organization (`organization_changed`: the organization it is served with is another one, not none): the
    new organization's endpoints get what they missed, for them alone: `call.ended`, and `call.finalized` at
    the current revision if the call is finalized; if the same commit changed the record, that
    `call.finalized` carries the new revision, whose `call.revised` goes to the unscoped endpoints alone (they
    had every message before). The old organization's endpoints are told nothing more: the record is no
    longer theirs. A commit that changes neither makes no message."""
    moved = organization_changed and finality.ended
    messages: list[Message] = []
    ended, revision = finality.ended, finality.revision
    if record_changed:
        if terminal and not ended:
            ended = True
            messages.append(Message("call.ended", 0))
        elif revision >= 1:
            revision += 1
            messages.append(Message("call.revised", revision, "unscoped" if moved else "all"))
    if moved:
        missed = [Message("call.ended", 0, "organization")]
        if revision >= 1:
            missed.append(Message("call.finalized", revision, "organization"))
        messages = missed + messages
    return Announcement(Finality(ended, revision), tuple(messages))


def on_quiet(finality: Finality, terminal: bool) -> Announcement:
    """The call has been quiet for LEDGER_FINALIZE_AFTER_S: `call.finalized` (revision 1) if it is terminal
    and not finalized yet, else nothing (a second finalizer that lost the race finds it done)."""
    if not terminal or finality.revision >= 1:
        return Announcement(finality, ())
    return Announcement(Finality(True, 1), (Message("call.finalized", 1),))


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One announcement as the commit (or the finalizer) wrote it into the call's outbox. `record` is the
    record exactly as GET served it at that revision; the id is the same for every copy and attempt."""

    id: str
    type: MessageType
    revision: int
    call_sid: str
    created_ms: int
    organization_id: str | int | None
    record: bytes
    audience: Audience = "all"

    def body(self) -> bytes:
        return message_body(self.type, iso_ms(self.created_ms), self.record, self.organization_id, self.revision)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook endpoint. `secrets` newest first, each with when it stops being used (None: never): a
    rotated-out secret keeps signing, beside the new one, for a day."""

    id: str
    url: str
    events: tuple[MessageType, ...]
    description: str
    organization_id: int | None
    secrets: tuple[tuple[str, int | None], ...]
    created_ms: int

    def current_secrets(self, now_ms: int) -> list[str]:
        return [secret for secret, until in self.secrets if until is None or until > now_ms]

    def wants(self, message: OutboxMessage) -> bool:
        """Whether this endpoint receives the message: its type is subscribed, and the call is of the
        endpoint's organization (an endpoint of no organization receives every call), unless the message is
        for the organization's endpoints alone or for the unscoped ones alone (its `audience`)."""
        if message.type not in self.events:
            return False
        if self.organization_id is None:
            return message.audience != "organization"
        return message.audience != "unscoped" and message.organization_id == self.organization_id

    def public(self) -> dict[str, object]:
        """The endpoint as the routes show it: never a secret."""
        return {"id": self.id, "url": self.url, "events": list(self.events), "description": self.description,
                "organization_id": self.organization_id, "created_at": iso_ms(self.created_ms)}


def iso_ms(ms: int) -> str:
    """An instant in milliseconds as ISO 8601 UTC, to the second when it has no fraction."""
    seconds, millis = divmod(ms, 1000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def message_body(kind: MessageType, timestamp: str, record: bytes, organization_id: int | str | None,
                 revision: int) -> bytes:
    """The message's JSON body. `record` is the record's JSON exactly as GET serves it at that revision; it is
    embedded as it is, never decoded and encoded again (a float or a key order could otherwise change)."""
    return b"".join((b'{"type":', orjson.dumps(kind), b',"timestamp":', orjson.dumps(timestamp),
                     b',"data":{"call":', record, b',"organization_id":', orjson.dumps(organization_id),
                     b',"revision":', str(revision).encode(), b"}}"))


def parse_retry_schedule(text: str) -> tuple[int, ...]:
    """`LEDGER_OUTBOUND_RETRY_SCHEDULE`: comma-separated delays in whole seconds, each 0 to 7 days."""
    try:
        delays = tuple(int(part) for part in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ValueError("a comma-separated list of whole seconds, such as 5,300,1800") from None
    if any(not 0 <= delay <= 7 * 86_400 for delay in delays):
        raise ValueError("each delay must be from 0 to 604800 seconds")
    if len(delays) > 20:
        raise ValueError("at most 20 retries")
    return delays


def retry_delay(attempt: int, schedule: tuple[int, ...]) -> int | None:
    """Seconds to wait after failed attempt number `attempt` (1 = the first try), or None: it was the last."""
    return schedule[attempt - 1] if 1 <= attempt <= len(schedule) else None


# IPv6 ranges that carry an IPv4 address inside (RFC 6052 NAT64, its local-use prefix, RFC 3056 6to4,
# the deprecated IPv4-compatible ::a.b.c.d, RFC 6145's SIIT ::ffff:0:a.b.c.d): a gateway on the way turns
# them into the IPv4 address, so they are judged as that address. Site-local (fec0::/10) is private space
# that Python's is_global does not know.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translator or tunnel, if it embeds one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in (*_NAT64, _SIIT)) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return low
    return None


def address_refused(address: str) -> str | None:
    """Why an endpoint may not be reached at this IP address (SSRF), or None when it may: only globally
    routable addresses are allowed. An IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4,
    IPv4-compatible, SIIT) is judged as that IPv4 address too; the local-use NAT64 prefix and site-local
    addresses are refused outright."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return f"{address} is a private address"
        if ip in _NAT64[1]:
            return f"{address} is not a public address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = address_refused(str(inner))
            return None if reason is None else f"{address} reaches {reason}"
    if ip.is_global and not ip.is_multicast:
        return None
    for refused, kind in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local"),
                          (ip.is_multicast, "multicast"), (ip.is_private, "private")):
        if refused:
            return f"{address} is a {kind} address"
    return f"{address} is not a public address"
