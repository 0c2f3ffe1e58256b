"""The calls API's indexes, as pure data: what one call contributes to them (SPEC §9, §10).

A call's index entry is derived from its committed state alone (`index_entry`), so any
worker that sees the same version of a call derives the same entry. The entry names:

- its **memberships**: the sorted sets it belongs to, scored by its list time, one per
  combination of scope (every call, and its organization) x status x assistant, so that
  every combination of those filters is one range read per shard;
- its **increments**: what it adds to the rollups (per scope: calls by status, durations,
  cost; per UTC day of its list time: the same, and per assistant), so stats and analytics
  read small counters, never the calls.

The index script (`ledger/index.lua`) removes the call's previous entry's memberships and
increments and adds the new ones, so the rollups are exactly the sums over current entries.
Nothing here does I/O.
"""

import base64
import binascii
import functools
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from ledger.events import TERMINAL_STATUSES
from ledger.money import NANO
from ledger.rules import REGISTER_FIELD, REGISTERS, CallState, render_record
from ledger.settings import Settings

# Fixed: a call's shard is crc32(sid) % SHARDS, and changing it would move every entry.
SHARDS = 16
# Record ids as sorted-set members: fixed width, so equal scores order by id (desc in a
# reverse range) and the member is also the entries-hash field. 2^53 - 1 has 16 digits.
MEMBER_WIDTH = 16
ALL = "*"  # the scope of every call (unscoped tokens)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def shard_of(call_sid: str) -> int:
    return zlib.crc32(call_sid.encode("utf-8", "surrogateescape")) % SHARDS


def member(record_id: int) -> str:
    return f"{record_id:0{MEMBER_WIDTH}d}"


def scope_name(organization_id: int | None) -> str:
    return ALL if organization_id is None else f"o{organization_id}"


def list_key(scope: str, status: str | None = None, assistant_id: int | None = None) -> str:
    """The sorted set (suffix under a shard's base) of a scope's calls with this status/assistant."""
    parts = []
    if status is not None:
        parts.append(f"s={status}")
    if assistant_id is not None:
        parts.append(f"a={assistant_id}")
    return f"z:{scope}:{'|'.join(parts)}"


def totals_key(scope: str) -> str:
    return f"t:{scope}"


def day_key(scope: str, day: str) -> str:
    return f"d:{scope}:{day}"


def day_assistants_key(scope: str, day: str) -> str:
    """Per-assistant rollups of a day, apart from the day's totals: analytics reads them only
    for the days of a period outside its whole weeks."""
    return f"da:{scope}:{day}"


def week_key(scope: str, monday: str) -> str:
    """Per-assistant rollups per ISO week too: 90 days of analytics read 12 weeks and a few
    days of them instead of 90 days (their size grows with the assistants, not the calls)."""
    return f"w:{scope}:{monday}"


@lru_cache(maxsize=4096)  # the apply loop asks for the same few weeks over and over
def week_of(day: str) -> str:
    """The Monday (YYYY-MM-DD) of a day's ISO week."""
    date = datetime.strptime(day, "%Y-%m-%d").date()
    return (date - timedelta(days=date.weekday())).isoformat()


_DAY_US = 86_400_000_000


def day_of(us: int) -> str:
    """The UTC date (YYYY-MM-DD) of an instant in microseconds."""
    return _day_name(us // _DAY_US)


@lru_cache(maxsize=4096)
def _day_name(days: int) -> str:
    try:
        date = _EPOCH + timedelta(days=days)
        # Not strftime("%Y"): it drops the leading zeros of years before 1000 ("1-01-01").
        return f"{date.year:04d}-{date.month:02d}-{date.day:02d}"
    except OverflowError:  # far outside any real call; one bucket for them
        return "0001-01-01" if days < 0 else "9999-12-31"


@dataclass(frozen=True)
class IndexEntry:
    """One call as the indexes see it (at one version of its state)."""

    call_sid: str
    record_id: int
    list_us: int  # started_at, else the earliest occurred_at of its events
    organization_id: int | None
    assistant_id: int
    assistant_name: str | None
    status: str
    duration: int | None
    total_cost: int | None  # nano-units, the rate-card estimate included (as the record shows it)
    to_phone_number: str
    customer_phone_number: str

    @property
    def member(self) -> str:
        return member(self.record_id)

    @property
    def day(self) -> str:
        return day_of(self.list_us)

    def scopes(self) -> list[str]:
        return [ALL] if self.organization_id is None else [ALL, scope_name(self.organization_id)]

    def memberships(self) -> list[str]:
        return self._shape.memberships

    def increments(self) -> list[tuple[str, str, int]]:
        """(key suffix, hash field, positive amount) this entry adds to the rollups."""
        amounts = self._amounts
        return [(key, name, amounts[slot]) for key, name, slot in self._shape.items if amounts[slot]]

    # The keys and fields an entry touches depend on a few of its values only (its shape);
    # the amounts are 4 numbers. Deriving the shape once per distinct one (cached) and the
    # delta between two entries of one shape from the 4 numbers is most of what made the
    # index entry a fifth of the worker's CPU cheap.
    @functools.cached_property
    def shape_key(self) -> "ShapeKey":
        return (self.organization_id, self.status, self.assistant_id, self.assistant_name, self.day,
                self.duration is not None, self.total_cost is not None)

    @functools.cached_property
    def _shape(self) -> "_Shape":
        return shape_of(self.shape_key)

    @functools.cached_property
    def _amounts(self) -> tuple[int, int, int, int]:
        cost = self.total_cost or 0
        return 1, self.duration or 0, cost // NANO, cost % NANO

    def payload(self) -> dict[str, Any]:
        """What readers need of the entry without loading the call: filters and the SID."""
        return {"sid": self.call_sid, "us": self.list_us, "org": self.organization_id,
                "aid": self.assistant_id, "an": self.assistant_name, "st": self.status,
                "dur": self.duration, "cph": self.customer_phone_number, "tph": self.to_phone_number}

    def encode(self) -> bytes:
        """The stored entry: the payload JSON, a newline, then [memberships, {rollup key:
        {field: amount}}, score] for the index script (every value a string: Lua numbers
        print large integers with an exponent). Readers take the part before the newline
        (JSON text never holds a raw one). The version is stored beside it."""
        amounts = [str(a) if a else "" for a in self._amounts]
        grouped: dict[str, dict[str, str]] = {}
        for key, fields in self._shape.grouped:
            present = {name: amounts[slot] for name, slot in fields if amounts[slot]}
            if present:
                grouped[key] = present
        return orjson.dumps(self.payload()) + b"\n" + orjson.dumps(
            [self._shape.memberships, grouped, str(self.list_us)])


# Where an increment's amount comes from: IndexEntry._amounts[slot].
_ONE, _DURATION, _WHOLE, _FRACTION = range(4)


@dataclass(frozen=True)
class _Shape:
    memberships: list[str]
    items: list[tuple[str, str, int]]  # (key suffix, field, amount slot), in increments' order
    grouped: list[tuple[str, list[tuple[str, int]]]]  # the same by key, first appearance first
    by_slot: list[list[tuple[str, str]]]  # (key suffix, field) per amount slot


# (organization_id, status, assistant_id, assistant_name, day, has a duration, has a cost)
ShapeKey = tuple[int | None, str, int, str | None, str, bool, bool]
# Shapes with an assistant name up to this long are cached (shared by every entry of that shape);
# a longer name's shape (up to 1 KiB names: ~20 KB) is derived for its entry alone, so the
# cache's memory stays bounded whatever names a platform sends.
_CACHED_NAME = 128


def shape_of(key: ShapeKey) -> _Shape:
    name = key[3]
    return _shape(*key) if name is None or len(name) <= _CACHED_NAME else _shape.__wrapped__(*key)


@lru_cache(maxsize=1024)  # a few statuses x assistants x days x organizations at any time
def _shape(organization_id: int | None, status: str, assistant_id: int, assistant_name: str | None, day: str,
           has_duration: bool, has_cost: bool) -> _Shape:
    scopes = [ALL] if organization_id is None else [ALL, scope_name(organization_id)]
    memberships = [list_key(scope, s, a) for scope in scopes for s in (None, status) for a in (None, assistant_id)]
    terminal = status in TERMINAL_STATUSES
    common: list[tuple[str, int]] = [("n", _ONE), (f"s:{status}", _ONE)]
    if status == "completed":
        common.append(("c", _ONE))
    elif terminal:
        common.append(("f", _ONE))
    if has_duration:
        common += [("d", _DURATION), ("dn", _ONE)]
    if has_cost:
        # Whole units and nano remainder apart: sums of nano-units could pass 2^63.
        common += [("cw", _WHOLE), ("cf", _FRACTION), ("cn", _ONE)]
    per_assistant: list[tuple[str, int]] = []
    if assistant_id:
        prefix = f"a:{assistant_id}:"
        per_assistant = [(prefix + name, slot) for name, slot in common if name in ("n", "d", "cw", "cf", "cn")]
        if assistant_name is not None:
            per_assistant.append((f"an:{assistant_id}:{assistant_name}", _ONE))
    items: list[tuple[str, str, int]] = []
    week = week_of(day)
    for scope in scopes:
        items += [(totals_key(scope), name, slot) for name, slot in common]
        items += [(day_key(scope, day), name, slot) for name, slot in common]
        items += [(day_assistants_key(scope, day), name, slot) for name, slot in per_assistant]
        items += [(week_key(scope, week), name, slot) for name, slot in per_assistant]
    grouped: dict[str, list[tuple[str, int]]] = {}
    by_slot: list[list[tuple[str, str]]] = [[], [], [], []]
    for key, name, slot in items:
        grouped.setdefault(key, []).append((name, slot))
        by_slot[slot].append((key, name))
    return _Shape(memberships, items, list(grouped.items()), by_slot)


class IndexBasis:
    """What the next update's delta needs of an entry a worker wrote (worker/apply.py
    IndexedEntries keeps these, not whole entries): its list time, id, shape and amounts."""

    __slots__ = ("_amounts", "list_us", "record_id", "shape_key")

    def __init__(self, entry: IndexEntry) -> None:
        self.list_us, self.record_id = entry.list_us, entry.record_id
        self.shape_key, self._amounts = entry.shape_key, entry._amounts

    @property
    def _shape(self) -> _Shape:
        return shape_of(self.shape_key)

    def memberships(self) -> list[str]:
        return self._shape.memberships

    def increments(self) -> list[tuple[str, str, int]]:
        amounts = self._amounts
        return [(key, name, amounts[slot]) for key, name, slot in self._shape.items if amounts[slot]]

    def size(self) -> int:
        """Bytes it holds, about (its strings; the shape is shared or derived on use)."""
        return 400 + len(self.shape_key[1]) + len(self.shape_key[3] or "") + len(self.shape_key[4])


def entry_delta(old: IndexEntry | IndexBasis, new: IndexEntry) -> bytes | None:
    """What replacing `old` by `new` changes, for the index script's fast path:
    [memberships to leave, memberships to join, [[rollup key, field, difference], ...]].
    None when the list time moved (every membership is re-scored: the script's full path)."""
    if old.list_us != new.list_us or old.record_id != new.record_id:
        return None
    if old.shape_key == new.shape_key:  # same keys and fields (the usual case): only amounts moved
        moved = zip(old._amounts, new._amounts, strict=True)
        return orjson.dumps([[], [], [[key, name, str(after - before)] for slot, (before, after) in enumerate(moved)
                                      if after != before for key, name in new._shape.by_slot[slot]]])
    held, wanted = old.memberships(), new.memberships()
    change: dict[tuple[str, str], int] = {}
    for key, name, amount in old.increments():
        change[(key, name)] = change.get((key, name), 0) - amount
    for key, name, amount in new.increments():
        change[(key, name)] = change.get((key, name), 0) + amount
    return orjson.dumps([[s for s in held if s not in wanted], [s for s in wanted if s not in held],
                         [[key, name, str(d)] for (key, name), d in change.items() if d]])


def entry_payload(stored: bytes) -> dict[str, Any]:
    """The payload of a stored entry (see `IndexEntry.encode`)."""
    payload: dict[str, Any] = orjson.loads(stored.partition(b"\n")[0])
    return payload


def list_us(state: CallState) -> int:
    if state.started is not None:
        return int(state.started[0])
    return state.first_seen if state.first_seen is not None else 0


def index_entry(call_sid: str, record_id: int, state: CallState, settings: Settings,
                record: dict[str, Any] | None = None) -> IndexEntry:
    """The call's entry, from its state as committed (`state` must hold the index registers),
    or from the record rendered from that state."""
    if record is None:
        record = render_record(call_sid, record_id, state, settings)
    organization = state.registers.get("organization_id")
    return IndexEntry(
        call_sid=call_sid, record_id=record_id, list_us=list_us(state),
        organization_id=organization[3] if organization else None,
        assistant_id=record["assistant_id"], assistant_name=record["assistant_name"], status=record["status"],
        duration=record["duration"], total_cost=record["total_cost"],
        to_phone_number=record["to_phone_number"], customer_phone_number=record["customer_phone_number"],
    )


def score(us: int) -> float:
    """A sorted-set score: exact for any instant within ±285 years of 1970 (2^53 µs)."""
    return float(us)


# The registers a record and its entry are rendered from: a worker loads them with every call
# it applies, so that it can render the record at commit, and index a call whose events
# were all duplicates (the repair path).
RECORD_FIELDS = tuple(REGISTER_FIELD + name for name in REGISTERS)


# -- cursors --------------------------------------------------------------------------------

def encode_cursor(score_text: str, member_text: str) -> str:
    """An opaque cursor naming the last item of a page: its score (as Redis wrote it) and id."""
    return base64.urlsafe_b64encode(f"{score_text}/{member_text}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(score text, member) of a cursor; ValueError when it is not one this service gave out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise ValueError("not a cursor") from None
    score_text, sep, member_text = raw.partition("/")
    if not sep or len(member_text) != MEMBER_WIDTH or not member_text.isdigit():
        raise ValueError("not a cursor")
    try:
        value = float(score_text)
    except ValueError:
        raise ValueError("not a cursor") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a cursor")
    return score_text, member_text
