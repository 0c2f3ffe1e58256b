"""Reading lists of calls through the indexes: pages, counts, search, export (SPEC §9).

The index says which calls and in what order; the records themselves are read from the
calls' own hashes and served as `GET /sid/{sid}` serves them (`StoredCall.served`), so a listed
record is never older than its lookup. A record whose organization no longer matches the caller's
scope (its index entry lagging a commit) is left out, never shown to the wrong tenant.
"""

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from call_ledger.api.query import CallFilter
from call_ledger.api.rendered import RenderedRecords
from call_ledger.api.visible import visible_calls
from call_ledger.core.errors import InvalidQuery
from call_ledger.core.indexes import SHARDS, ListCursor, encode_cursor, list_key, scope_name
from call_ledger.core.policy import Policy
from call_ledger.core.served import StoredCall
from call_ledger.store import Store
from call_ledger.store.indexes import IndexStore, Item, bound

# List filters that are not indexed (substrings, durations) are checked on each indexed
# candidate; a request examines at most this many, else it is refused (422) with a hint to
# narrow it by status, assistant_id or dates. Within the bound `total` stays exact.
SCAN_LIMIT = 10_000
# Search looks at most at this many of the scope's most recent calls.
SEARCH_SCAN = 10_000
# What one export holds at a time (SPEC §14: a reader that stalls must not pin much memory,
# and LEDGER_MAX_EXPORTS of them may stall per organization): under 1.5 x EXPORT_SHARD_PAGE
# index items (their payloads' bytes) of each of the 16 shards, all running low read on in one
# round trip (`IndexStore.iterate(together=True)`), and two batches of EXPORT_BATCH calls'
# fields: the one being written and the one read ahead (one script call each). 40 stalled
# exports grow the API by some 36 MiB; pages of 32 saved about 2 us of CPU per row and took
# +43 MiB, not worth the margin. 16 x 500 parsed items read up front held megabytes.
EXPORT_SHARD_PAGE = 16
EXPORT_BATCH = 100


@dataclass(frozen=True)
class Page:
    records: list[bytes]  # each record's JSON, as served
    total: int
    next_cursor: str | None


def _range(f: CallFilter) -> tuple[str, str]:
    return bound(f.date_from_us, "-inf"), bound(f.date_to_us, "+inf")


def _suffix(f: CallFilter, scope: int | None) -> str:
    return list_key(scope_name(scope), f.status, f.assistant_id)


def _empty_range(f: CallFilter) -> bool:
    return f.date_from_us is not None and f.date_to_us is not None and f.date_from_us > f.date_to_us


async def served_items(store: Store, policy: Policy, items: list[Item], scope: int | None,
                       rendered: RenderedRecords | None = None) -> list[bytes]:
    """The served records of these index items, in order; those not (or no longer) the caller's left out.
    `rendered`: the process's records rendered for lookups (api.rendered), to take from and keep in."""
    calls = await visible_calls(store, [item.payload.call_sid for item in items], scope)
    if rendered is None:
        return [call.served(policy) for call in calls]
    return [rendered.served(call, policy) for call in calls]


async def count(indexes: IndexStore, f: CallFilter, scope: int | None) -> int:
    if _empty_range(f):
        return 0
    suffix = _suffix(f, scope)
    lo, hi = _range(f)
    candidates = await indexes.count(suffix, lo, hi)
    if not f.scanned():
        return candidates
    _check_scan(f, candidates)
    return len(await _scan(indexes, f, suffix, lo, hi))


def _check_scan(f: CallFilter, candidates: int) -> None:
    if candidates > SCAN_LIMIT:
        raise InvalidQuery(f"{f.scanned()[0]} is checked call by call and {candidates} calls match the other "
                           f"filters (at most {SCAN_LIMIT}): narrow them with status, assistant_id or a date range")


async def _scan(indexes: IndexStore, f: CallFilter, suffix: str, lo: str, hi: str) -> list[Item]:
    async with aclosing(indexes.iterate(suffix, lo, hi, batch=1000)) as items:
        return [item async for item in items if f.matches(item.payload)]


async def page(store: Store, indexes: IndexStore, policy: Policy, f: CallFilter, scope: int | None,
               skip: int, limit: int, cursor: ListCursor | None, rendered: RenderedRecords | None = None) -> Page:
    """One page of the list, newest first, with the total and the cursor to continue."""
    if _empty_range(f):
        return Page([], 0, None)
    suffix = _suffix(f, scope)
    lo, hi = _range(f)
    total = await indexes.count(suffix, lo, hi, archived=False)  # what the pages hold: the calls in Redis
    items: list[Item] = []
    if not f.scanned():
        wanted = skip + limit + 1
        # Calls spread evenly over the shards: twice a shard's share (and a little) is read
        # at first, in one round trip; a shard that runs out is read on, so any page is exact.
        first = min(wanted, 2 * (wanted // SHARDS) + 8)
        async with aclosing(indexes.iterate(suffix, lo, hi, after=cursor, batch=min(wanted, 1000),
                                            first=first)) as stream:
            seen = 0
            async for item in stream:
                if seen >= skip:
                    items.append(item)
                    if len(items) > limit:
                        break
                seen += 1
    else:
        _check_scan(f, total)
        matched = await _scan(indexes, f, suffix, lo, hi)
        total = len(matched)
        if cursor is not None:
            after = (float(cursor[0]), int(cursor[1]))
            matched = [item for item in matched if item.order < after]
        items = matched[skip:skip + limit + 1]
    more = len(items) > limit
    items = items[:limit]
    next_cursor = encode_cursor(items[-1].score_text, items[-1].member) if more and items else None
    return Page(await served_items(store, policy, items, scope, rendered), total, next_cursor)


async def search(store: Store, indexes: IndexStore, policy: Policy, q: str, limit: int,
                 scope: int | None, rendered: RenderedRecords | None = None) -> list[bytes]:
    """Records whose SID, numbers or assistant name contain `q` (lower-cased), newest first,
    among the scope's SEARCH_SCAN most recent calls."""
    found: list[Item] = []
    examined = 0
    async with aclosing(indexes.iterate(list_key(scope_name(scope)), batch=500)) as stream:
        async for item in stream:
            p = item.payload
            if any(isinstance(text, str) and q in text.lower()
                   for text in (p.call_sid, p.customer_phone_number, p.to_phone_number, p.assistant_name)):
                found.append(item)
                if len(found) >= limit:
                    break
            examined += 1
            if examined >= SEARCH_SCAN:
                break
    return await served_items(store, policy, found, scope, rendered)


async def export(store: Store, indexes: IndexStore, f: CallFilter,
                 scope: int | None) -> AsyncGenerator[list[StoredCall], None]:
    """Every matching call as stored, newest first, EXPORT_BATCH at a time
    (memory stays flat); those not (or no longer) the caller's left out. `api.export` writes
    the records from them: the record the worker stored ready (`j`), no state rebuilt.

    The next batch's calls are read while the caller writes this one: Redis answers on its
    own core meanwhile, and an export waited for it batch after batch. So an export holds
    two batches (the one written, the one read ahead), never more."""
    if _empty_range(f):
        return
    lo, hi = _range(f)
    batch: list[str] = []
    check = bool(f.scanned())  # else every indexed candidate matches: no payload test per call
    ahead: asyncio.Future[list[StoredCall]] | None = None
    try:
        async with aclosing(indexes.iterate(_suffix(f, scope), lo, hi, batch=EXPORT_SHARD_PAGE,
                                            together=True)) as stream:
            async for item in stream:
                payload = item.payload
                if not check or f.matches(payload):
                    batch.append(payload.call_sid)
                if len(batch) >= EXPORT_BATCH:
                    done, ahead = ahead, asyncio.ensure_future(visible_calls(store, batch, scope))
                    batch = []
                    await asyncio.sleep(0)  # the read ahead sends its command before we go on
                    if done is not None:
                        yield await done
        if batch:
            done, ahead = ahead, asyncio.ensure_future(visible_calls(store, batch, scope))
            if done is not None:
                yield await done
        if ahead is not None:
            last, ahead = ahead, None
            yield await last
    finally:
        if ahead is not None:  # closed early (a stalled or failed export): nothing will await it
            if not ahead.done():
                ahead.cancel()
            ahead.add_done_callback(_retrieved)  # run at once when done: a failure taken, not logged


def _retrieved(future: "asyncio.Future[Any]") -> None:
    """Nothing waits for a read ahead given up: take its outcome, so no error is logged for it."""
    if not future.cancelled():
        future.exception()

