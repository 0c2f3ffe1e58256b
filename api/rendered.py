"""Records rendered for lookups, kept per process by the commit that made them.

Layout 4 keeps no rendered copy in Redis (call_ledger.core.plain): every lookup renders the record from
the call hash it read, about 25-40 µs of CPU (docs/performance.md, *Layout 4*). A call read again before
its next commit renders to the same bytes, so GET by SID and by id keep what they rendered, keyed by the
call and the commit that made what they read: its token `t` and version `v` (commit.lua: every commit
that writes an event writes a token no other commit has), and serve it while the hash they read still
says so. The scope check runs on the fields read before this (api.visible), and nothing else a record
shows changes without a commit: the finality and archive fields are not part of it, and the policy
(currency, rates) is the process's own. A hash without a token (committed before tokens) or with a
current stored copy (layouts 2 and 3) is served as it is, without the cache.

Bounded by the bytes of the records kept (call_meta makes one up to ~16 KiB): the oldest is dropped
first. Plain bytes in a dict, which the collector does not track (docs/performance.md, *Collector
pauses*).
"""

from aiohttp import web

from call_ledger.core.policy import Policy
from call_ledger.core.served import StoredCall

__all__ = ["RENDERED", "RenderedRecords"]

# About 8,000 records of the usual size: a few MiB a process.
DEFAULT_CAPACITY_BYTES = 4 * 1024 * 1024


class RenderedRecords:
    """What `StoredCall.served` gave for each recently read call, by the commit it was of."""

    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self._kept: dict[str, tuple[bytes, bytes]] = {}  # call SID -> (token and version, the served JSON)
        self._bytes = 0

    def served(self, call: StoredCall, policy: Policy) -> bytes:
        """The record `call.served(policy)` gives, rendered once per commit of the call."""
        token = call.fields.get(b"t")
        if token is None or call.stored_json() is not None:
            return call.served(policy)
        stamp = token + b"/" + call.fields.get(b"v", b"0")
        kept = self._kept.get(call.call_sid)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        body = call.served(policy)
        if kept is not None:
            del self._kept[call.call_sid]
            self._bytes -= len(kept[1])
        if len(body) <= self.capacity_bytes:
            while self._bytes + len(body) > self.capacity_bytes:
                oldest = next(iter(self._kept))
                self._bytes -= len(self._kept.pop(oldest)[1])
            self._kept[call.call_sid] = (stamp, body)
            self._bytes += len(body)
        return body

    def __len__(self) -> int:
        return len(self._kept)


RENDERED = web.AppKey("rendered_records", RenderedRecords)
