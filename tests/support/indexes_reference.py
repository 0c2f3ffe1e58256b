"""A verbatim copy of call_ledger/core/indexes.py's IndexEntry, shapes, IndexBasis, entry_delta and index_entry as
of commit 0ce3e7c (before they were made faster), for tests only: the product's must give exactly
the bytes these give (index.lua compares stored entries by equality, and applies the deltas).

Changed since, with the entry format (issue #23): the rollups no longer count assistant names
(no `an:<aid>:<name>` fields, and the name is not part of a shape), and per-assistant fields
are kept per calendar month too (`m:<scope>:<YYYY-MM>`). With layout 5: an entry can be encoded as its lean payload
alone (with its cost `c`, without its list time and null values), a new entry is sent as its creation (every
membership joined, every amount added), and an entry whose list time moved as a delta joining every
membership again (no longer None: the index script has no full path)."""
import functools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from call_ledger.core.events import TERMINAL_STATUSES
from call_ledger.core.indexes import (
    ALL,
    day_assistants_key,
    day_key,
    day_of,
    list_key,
    list_us,
    member,
    month_key,
    scope_name,
    totals_key,
    week_key,
    week_of,
)
from call_ledger.core.money import NANO
from call_ledger.core.rules import CallState, render_record
from call_ledger.settings import Settings


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
        return (self.organization_id, self.status, self.assistant_id, self.day,
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

    def lean_payload(self) -> dict[str, Any]:
        """Layout 5's payload: the cost added (as text from 2^53 on), the list time left out (unless a
        score cannot hold it), null values left out."""
        lean = {**self.payload(), "c": self.total_cost}
        if self.total_cost is not None and abs(self.total_cost) >= 2**53:
            lean["c"] = str(self.total_cost)
        if abs(self.list_us) < 2**53:
            del lean["us"]
        return {key: value for key, value in lean.items() if value is not None}

    def creation(self) -> bytes:
        """The delta from no entry to this one."""
        return orjson.dumps([[], self.memberships(), [[key, name, str(amount)] for key, name, amount
                                                      in self.increments()]])

    def encode(self, payload_only: bool = False) -> bytes:
        """The stored entry: the payload JSON, a newline, then [memberships, {rollup key:
        {field: amount}}, score] for the index script (every value a string: Lua numbers
        print large integers with an exponent). Readers take the part before the newline
        (JSON text never holds a raw one). The version is stored beside it."""
        if payload_only:
            return orjson.dumps(self.lean_payload())
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


# (organization_id, status, assistant_id, day, has a duration, has a cost)
ShapeKey = tuple[int | None, str, int, str, bool, bool]


def shape_of(key: ShapeKey) -> _Shape:
    return _shape(*key)


@lru_cache(maxsize=1024)  # a few statuses x assistants x days x organizations at any time
def _shape(organization_id: int | None, status: str, assistant_id: int, day: str,
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
    items: list[tuple[str, str, int]] = []
    week = week_of(day)
    for scope in scopes:
        items += [(totals_key(scope), name, slot) for name, slot in common]
        items += [(day_key(scope, day), name, slot) for name, slot in common]
        items += [(day_assistants_key(scope, day), name, slot) for name, slot in per_assistant]
        items += [(week_key(scope, week), name, slot) for name, slot in per_assistant]
        items += [(month_key(scope, day[:7]), name, slot) for name, slot in per_assistant]
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
        return 400 + len(self.shape_key[1]) + len(self.shape_key[3])


def entry_delta(old: IndexEntry | IndexBasis, new: IndexEntry) -> bytes | None:
    """What replacing `old` by `new` changes, for the index script:
    [memberships to leave, memberships to join, [[rollup key, field, difference], ...]].
    When the list time moved every membership of `new` is joined (re-scored). None for two record ids."""
    if old.record_id != new.record_id:
        return None
    rescored = old.list_us != new.list_us
    if old.shape_key == new.shape_key and not rescored:  # same keys and fields (the usual case): only amounts moved
        moved = zip(old._amounts, new._amounts, strict=True)
        return orjson.dumps([[], [], [[key, name, str(after - before)] for slot, (before, after) in enumerate(moved)
                                      if after != before for key, name in new._shape.by_slot[slot]]])
    held, wanted = old.memberships(), new.memberships()
    change: dict[tuple[str, str], int] = {}
    for key, name, amount in old.increments():
        change[(key, name)] = change.get((key, name), 0) - amount
    for key, name, amount in new.increments():
        change[(key, name)] = change.get((key, name), 0) + amount
    return orjson.dumps([[s for s in held if s not in wanted],
                         list(wanted) if rescored else [s for s in wanted if s not in held],
                         [[key, name, str(d)] for (key, name), d in change.items() if d]])


def index_entry(call_sid: str, record_id: int, state: CallState, settings: Settings,
                record: dict[str, Any] | None = None) -> IndexEntry:
    """The call's entry, from its state as committed (`state` must hold the index registers),
    or from the record rendered from that state."""
    if record is None:
        record = render_record(call_sid, record_id, state, settings.policy)
    organization = state.registers.get("organization_id")
    return IndexEntry(
        call_sid=call_sid, record_id=record_id, list_us=list_us(state),
        organization_id=organization[3] if organization else None,
        assistant_id=record["assistant_id"], assistant_name=record["assistant_name"], status=record["status"],
        duration=record["duration"], total_cost=record["total_cost"],
        to_phone_number=record["to_phone_number"], customer_phone_number=record["customer_phone_number"],
    )
