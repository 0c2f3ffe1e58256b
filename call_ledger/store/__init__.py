"""All of Redis: every key name (keys), the one client (client), the one mapping of Redis errors to
"unavailable" (errors), every Lua script (lua/, run by scripts), and the parts the `Store` facade
composes: streams, records, indexes, signatures, outbox (facade)."""

from call_ledger.store.client import open_redis
from call_ledger.store.errors import REQUEST_TIMEOUT_S, describe_redis_error
from call_ledger.store.facade import Store
from call_ledger.store.keys import Keys
from call_ledger.store.records import CommitReply, CommitWrite, LoadedCall
from call_ledger.store.streams import GROUP, Entry, entry_order

__all__ = ["GROUP", "REQUEST_TIMEOUT_S", "CommitReply", "CommitWrite", "Entry", "Keys", "LoadedCall", "Store",
           "describe_redis_error", "entry_order", "open_redis"]
