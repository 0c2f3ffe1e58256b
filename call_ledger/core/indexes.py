"""The calls API's indexes, as pure data: what one call contributes to them (SPEC §9, §10).

A call's index entry is derived from its committed state alone (`index_entry`), so any
worker that sees the same version of a call derives the same entry. The entry names:

- its **memberships**: the sorted sets it belongs to, scored by its list time, one per
  combination of scope (every call, and its organization) x status x assistant, so that
  every combination of those filters is one range read per shard;
- its **increments**: what it adds to the rollups (per scope: calls by status, durations,
  cost; per UTC day of its list time: the same, and per assistant), so stats and analytics
  read small counters, never the calls.

The index script (`call_ledger/store/lua/index.lua`) removes the call's previous entry's memberships and
increments and adds the new ones, so the rollups are exactly the sums over current entries.
Nothing here does I/O.
"""

import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from call_ledger.core import cursors
from call_ledger.core.events import TERMINAL_STATUSES
from call_ledger.core.money import NANO
from call_ledger.core.policy import Policy
from call_ledger.core.rules import REGISTER_FIELD, REGISTERS, CallState, render_record

# Fixed: a call's shard is crc32(sid) % SHARDS, and changing it would move every entry.
SHARDS = 16
# Record ids as sorted-set members: fixed width, so equal scores order by id (desc in a
# reverse range) and the member is also the entries-hash field. 2^53 - 1 has 16 digits.
MEMBER_WIDTH = 16
ALL = "*"  # the scope of every call (unscoped tokens)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT = 2**53  # integers a double (a Lua number, many JSON readers) holds exactly


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


def assistant_lists_prefix(scope: str) -> str:
    """What the names of a scope's per-assistant sorted sets start with: `list_key(scope, None, aid)` is it
    followed by the assistant id (the rollup script reads each assistant's set by it)."""
    return list_key(scope) + "a="


def totals_key(scope: str) -> str:
    return f"t:{scope}"


def day_key(scope: str, day: str) -> str:
    return f"d:{scope}:{day}"


def day_assistants_key(scope: str, day: str) -> str:
    """Per-assistant rollups of a day, apart from the day's totals: analytics reads them only
    for the days of a period outside its whole weeks."""
    return f"da:{scope}:{day}"


def week_key(scope: str, monday: str) -> str:
    """Per-assistant rollups per ISO week too: a period reads whole weeks of them rather than
    their days (their size grows with the assistants, not the calls)."""
    return f"w:{scope}:{monday}"


def month_key(scope: str, month: str) -> str:
    """Per-assistant rollups per calendar month (YYYY-MM) too: 90 days of analytics read 2 or
    3 months, some weeks and a few days of them (api.aggregates.period_plan)."""
    return f"m:{scope}:{month}"


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


class IndexEntry:
    """One call as the indexes see it (at one version of its state). Not to be changed once made:
    its shape and amounts are derived from its fields when it is made."""

    # Slots, and the derived parts computed in __init__, rather than a frozen dataclass with
    # cached properties: its __init__ (object.__setattr__ per field) and functools.cached_property
    # (which takes a lock on Python 3.11) made an entry and its shape in ~5.4 µs, this in ~0.9.
    __slots__ = ("_amounts", "_shape", "assistant_id", "assistant_name", "call_sid", "customer_phone_number",
                 "duration", "list_us", "organization_id", "record_id", "shape_key", "status", "to_phone_number",
                 "total_cost")

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
    # The keys and fields an entry touches depend on a few of its values only (its shape);
    # the amounts are 4 numbers. The shape is derived once per distinct one (cached), and the
    # encoding and the deltas between entries are templates of their shapes (made once, by
    # orjson) filled in with the 4 numbers: no dicts built and encoded per entry.
    shape_key: "ShapeKey"
    _shape: "_Shape"
    _amounts: "Amounts"

    def __init__(self, call_sid: str, record_id: int, list_us: int, organization_id: int | None,
                 assistant_id: int, assistant_name: str | None, status: str, duration: int | None,
                 total_cost: int | None, to_phone_number: str, customer_phone_number: str) -> None:
        self.call_sid, self.record_id, self.list_us = call_sid, record_id, list_us
        self.organization_id, self.assistant_id, self.assistant_name = organization_id, assistant_id, assistant_name
        self.status, self.duration, self.total_cost = status, duration, total_cost
        self.to_phone_number, self.customer_phone_number = to_phone_number, customer_phone_number
        cost = total_cost or 0
        self._amounts = (1, duration or 0, cost // NANO, cost % NANO)
        self.shape_key = (organization_id, status, assistant_id, day_of(list_us), duration is not None,
                          total_cost is not None)
        self._shape = _shape(*self.shape_key)

    def _fields(self) -> tuple[Any, ...]:
        return (self.call_sid, self.record_id, self.list_us, self.organization_id, self.assistant_id,
                self.assistant_name, self.status, self.duration, self.total_cost, self.to_phone_number,
                self.customer_phone_number)

    # Equal, hashable and shown by value, as the frozen dataclass it was.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, IndexEntry):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        names = ("call_sid", "record_id", "list_us", "organization_id", "assistant_id", "assistant_name", "status",
                 "duration", "total_cost", "to_phone_number", "customer_phone_number")
        return f"IndexEntry({', '.join(f'{n}={v!r}' for n, v in zip(names, self._fields(), strict=True))})"

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

    def increments(self) -> list["Increment"]:
        """What this entry adds to the rollups (positive amounts only)."""
        return self._shape.increments(self._amounts)

    def payload(self) -> dict[str, Any]:
        """What readers need of the entry without loading the call: filters and the SID."""
        return {"sid": self.call_sid, "us": self.list_us, "org": self.organization_id,
                "aid": self.assistant_id, "an": self.assistant_name, "st": self.status,
                "dur": self.duration, "cph": self.customer_phone_number, "tph": self.to_phone_number}

    def lean_payload(self) -> dict[str, Any]:
        """The payload as layout 5 stores it: what readers need, and the cost (`c`, nano-units; as text
        from 2^53 on, which not every JSON reader takes exactly), so that what the entry adds to the
        index is derived from it (`stored_contributions`). Without the list time (the entry's score in
        every list, `z:*:` among them: the index script answers with it) and without null values (a
        missing key reads as None): a completed call's entry fits a smaller allocation. The list
        time is kept where a score does not hold it exactly."""
        cost = self.total_cost
        us = self.list_us
        lean = {"sid": self.call_sid,
                "us": None if -_EXACT < us < _EXACT else us,  # kept only where a score does not hold it exactly
                "org": self.organization_id, "aid": self.assistant_id, "an": self.assistant_name,
                "st": self.status, "dur": self.duration, "cph": self.customer_phone_number,
                "tph": self.to_phone_number, "c": cost if cost is None or -_EXACT < cost < _EXACT else str(cost)}
        return {key: value for key, value in lean.items() if value is not None}

    def encode(self, payload_only: bool = False) -> bytes:
        """The stored entry. In layout 5 (`payload_only`) its lean payload alone. Before it, the
        payload JSON, a newline, then [memberships, {rollup key: {field: amount}}, score], which
        the index script of a release before layout 5 undoes an entry from (every value a string:
        Lua numbers print large integers with an exponent; a field whose amount is 0 is left out,
        and a key left with none). Readers take the part before the newline (JSON text never
        holds a raw one). The version is stored beside it."""
        if payload_only:
            return orjson.dumps(self.lean_payload())
        amounts = self._amounts
        rollups = self._shape.encoding(_nonzero_slots(amounts))
        return orjson.dumps(self.payload()) + rollups.fill((*amounts, self.list_us))

    def creation(self) -> bytes:
        """The delta from no entry to this one: every membership joined, every amount added."""
        amounts = self._amounts
        return self._shape.creation(_nonzero_slots(amounts)).fill(amounts)


# -- amounts and their slots -------------------------------------------------------------------
#
# An entry adds four amounts to the rollups: 1 (it counts as one call), its duration, and its cost
# as whole units and nano remainder (sums of nano-units could pass 2^63). `IndexEntry._amounts`
# holds them in this order; a rollup field names the slot its amount comes from.
_ONE, _DURATION, _WHOLE, _FRACTION = _SLOTS = range(4)
Amounts = tuple[int, int, int, int]  # (1, duration, whole units of cost, nano remainder), by slot
_LIST_US = 4  # in an encoding's values, after the amounts

# A set of slots, as bits (slot s is in it when bit 1 << s is set): small ints are the cheapest
# cache keys, and the apply loop computes one or two of them per call it indexes.
SlotSet = int
_ALL_SLOTS: SlotSet = 0b1111


def _nonzero_slots(values: Amounts) -> SlotSet:
    """The slots whose value is not 0 (of amounts: which fields an entry's rollups have)."""
    one, duration, whole, fraction = values
    return (one and 1) | (duration and 2) | (whole and 4) | (fraction and 8)


def _has(slots: SlotSet, slot: int) -> bool:
    return bool(slots >> slot & 1)


def _differences(before: Amounts, after: Amounts) -> Amounts:
    return after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]


class Increment(NamedTuple):
    """What an entry adds to one rollup field: `amount` to `field` of the hash `key` (a suffix)."""

    key: str
    field: str
    amount: int


class _Rollup(NamedTuple):
    """One rollup field an entry of some shape adds to, and the slot of the amount it adds."""

    key: str
    field: str
    slot: int


# -- templates ---------------------------------------------------------------------------------

# A hole in a template: orjson writes this fragment as is, and a raw NUL is a byte it writes
# nowhere else (JSON text escapes control characters), so the holes are found in its output.
_HOLE = orjson.Fragment(b'"\x00"')


def _nothing(values: tuple[int, ...]) -> tuple[()]:
    return ()


class _Template:
    """JSON text with integers (written as strings) left out, made by orjson from the very
    structure it stands for, so that filling it in gives orjson's bytes for that structure.

    The entries of one shape (and the deltas between two shapes) differ only in a few integers, so
    each structure is encoded once, with `_HOLE`s where its integers go, and then filled in with
    printf (`%d`) per entry: no dicts built and encoded on the apply path. `fill(values)` puts
    values[holes[i]] in the i-th hole."""

    __slots__ = ("_pick", "_text")

    def __init__(self, structure: Any, holes: list[int], before: bytes = b"") -> None:
        out = orjson.dumps(structure)
        if out.count(b"\x00") != len(holes):
            raise AssertionError("a template's holes are not where its structure has them")
        self._text = before.replace(b"%", b"%%") + out.replace(b"%", b"%%").replace(b"\x00", b"%d")
        self._pick: Callable[[tuple[int, ...]], tuple[int, ...] | int] = itemgetter(*holes) if holes else _nothing

    def fill(self, values: tuple[int, ...]) -> bytes:
        return self._text % self._pick(values)


# -- shapes ------------------------------------------------------------------------------------

# (organization_id, status, assistant_id, day, has a duration, has a cost). Not the assistant's
# name: the rollups do not count names (analytics reads an assistant's name from its latest
# call's entry, api.aggregates), so a platform sending a new name per call makes no new shapes.
ShapeKey = tuple[int | None, str, int, str, bool, bool]


class _Shape:
    """The memberships and rollup fields of the entries of one shape, and the templates of their
    encodings and of the deltas between two of them (made as they are first needed: a few per
    shape, one per set of amounts that are 0 or moved)."""

    __slots__ = ("_creations", "_deltas", "_encodings", "items", "memberships")

    def __init__(self, memberships: list[str], items: list[_Rollup]) -> None:
        self.memberships = memberships
        self.items = items  # in increments' order
        self._encodings: dict[SlotSet, _Template] = {}
        self._deltas: dict[SlotSet, _Template] = {}
        self._creations: dict[SlotSet, _Template] = {}

    def increments(self, amounts: Amounts) -> list[Increment]:
        return [Increment(key, name, amounts[slot]) for key, name, slot in self.items if amounts[slot]]

    def encoding(self, nonzero: SlotSet) -> _Template:
        """An entry's encoding after its payload, for amounts nonzero in the slots `nonzero`.
        Values: the 4 amounts, then the list time."""
        template = self._encodings.get(nonzero)
        if template is None:
            rollups: dict[str, dict[str, Any]] = {}  # key -> {field: "1" or a hole}, in the fields' order
            holes: list[int] = []
            for key, name, slot in self.items:
                if _has(nonzero, slot):
                    rollups.setdefault(key, {})[name] = "1" if slot == _ONE else _HOLE
                    if slot != _ONE:
                        holes.append(slot)
            template = self._encodings[nonzero] = _Template([self.memberships, rollups, _HOLE],
                                                            [*holes, _LIST_US], before=b"\n")
        return template

    def creation(self, nonzero: SlotSet) -> _Template:
        """The delta from no entry to one of this shape with amounts nonzero in the slots `nonzero`.
        Values: the 4 amounts."""
        template = self._creations.get(nonzero)
        if template is None:
            added = [item for item in self.items if _has(nonzero, item.slot)]
            template = self._creations[nonzero] = _Template(
                [[], self.memberships, [[key, name, "1" if slot == _ONE else _HOLE] for key, name, slot in added]],
                [slot for _, _, slot in added if slot != _ONE])
        return template

    def amounts_delta(self, moved: SlotSet) -> _Template:
        """The delta between two entries of this shape whose amounts differ in the slots `moved`:
        every field of a moved slot, slot by slot, each in the order of the shape's fields.
        Values: the 4 differences."""
        template = self._deltas.get(moved)
        if template is None:
            changed = [item for slot in _SLOTS if _has(moved, slot) for item in self.items if item.slot == slot]
            template = self._deltas[moved] = _Template([[], [], [[key, name, _HOLE] for key, name, _ in changed]],
                                                       [slot for _, _, slot in changed])
        return template


def shape_of(key: ShapeKey) -> _Shape:
    return _shape(*key)


# The rollup fields, short (they are in every rollup hash of every shard): `Rollup` reads them.
_CALLS, _COMPLETED, _FAILED = "n", "c", "f"
_DURATION_SUM, _WITH_DURATION = "d", "dn"
_COST_WHOLE, _COST_FRACTION, _WITH_COST = "cw", "cf", "cn"
_STATUS_PREFIX = "s:"  # + status: calls with it
_ASSISTANT_PREFIX = "a:"  # + assistant id + ":" + field: that field of the assistant's calls
_PER_ASSISTANT = (_CALLS, _DURATION_SUM, _COST_WHOLE, _COST_FRACTION, _WITH_COST)


@lru_cache(maxsize=1024)  # a few statuses x assistants x days x organizations at any time
def _shape(organization_id: int | None, status: str, assistant_id: int, day: str, has_duration: bool,
           has_cost: bool) -> _Shape:
    scopes = [ALL] if organization_id is None else [ALL, scope_name(organization_id)]
    memberships = [list_key(scope, s, a) for scope in scopes for s in (None, status) for a in (None, assistant_id)]
    terminal = status in TERMINAL_STATUSES
    common: list[tuple[str, int]] = [(_CALLS, _ONE), (_STATUS_PREFIX + status, _ONE)]
    if status == "completed":
        common.append((_COMPLETED, _ONE))
    elif terminal:
        common.append((_FAILED, _ONE))
    if has_duration:
        common += [(_DURATION_SUM, _DURATION), (_WITH_DURATION, _ONE)]
    if has_cost:
        # Whole units and nano remainder apart: sums of nano-units could pass 2^63.
        common += [(_COST_WHOLE, _WHOLE), (_COST_FRACTION, _FRACTION), (_WITH_COST, _ONE)]
    per_assistant: list[tuple[str, int]] = []
    if assistant_id:
        prefix = f"{_ASSISTANT_PREFIX}{assistant_id}:"
        per_assistant = [(prefix + name, slot) for name, slot in common if name in _PER_ASSISTANT]
    items: list[_Rollup] = []
    week, month = week_of(day), day[:7]
    for scope in scopes:
        items += [_Rollup(totals_key(scope), name, slot) for name, slot in common]
        items += [_Rollup(day_key(scope, day), name, slot) for name, slot in common]
        items += [_Rollup(day_assistants_key(scope, day), name, slot) for name, slot in per_assistant]
        items += [_Rollup(week_key(scope, week), name, slot) for name, slot in per_assistant]
        items += [_Rollup(month_key(scope, month), name, slot) for name, slot in per_assistant]
    return _Shape(memberships, items)


class Rollup:
    """A rollup hash (or a sum of them) as counters with names: what stats and analytics read.
    The only reader of the rollups' short field names."""

    __slots__ = ("_counters",)

    def __init__(self, counters: dict[str, int]) -> None:
        self._counters = counters

    @property
    def calls(self) -> int:
        return self._counters.get(_CALLS, 0)

    @property
    def completed(self) -> int:
        return self._counters.get(_COMPLETED, 0)

    @property
    def failed(self) -> int:
        """Calls ended otherwise than completed."""
        return self._counters.get(_FAILED, 0)

    def with_status(self, status: str) -> int:
        return self._counters.get(_STATUS_PREFIX + status, 0)

    @property
    def duration(self) -> int:
        """Seconds, summed over the calls that have a duration."""
        return self._counters.get(_DURATION_SUM, 0)

    @property
    def average_duration(self) -> float | None:
        """Over the calls that have a duration; None without any."""
        with_duration = self._counters.get(_WITH_DURATION)
        return self.duration / with_duration if with_duration else None

    @property
    def cost_nano(self) -> int | None:
        """The calls' cost summed exactly; None when no call in it had a cost."""
        if not self._counters.get(_WITH_COST):
            return None
        return self._counters.get(_COST_WHOLE, 0) * NANO + self._counters.get(_COST_FRACTION, 0)

    def per_assistant(self) -> "dict[int, Rollup]":
        """The per-assistant counters in it (`a:<aid>:<field>`), summed by assistant."""
        sums: dict[int, dict[str, int]] = {}
        for field, value in self._counters.items():
            if field.startswith(_ASSISTANT_PREFIX):
                _, aid_text, counter = field.split(":", 2)
                counters = sums.setdefault(int(aid_text), {})
                counters[counter] = counters.get(counter, 0) + value
        return {aid: Rollup(counters) for aid, counters in sums.items()}


class IndexBasis:
    """What the next update's delta needs of an entry a worker wrote (worker/apply.py
    IndexedEntries keeps these, not whole entries): its list time, id, shape and amounts."""

    __slots__ = ("_amounts", "list_us", "record_id", "shape_key")

    def __init__(self, entry: IndexEntry) -> None:
        self.list_us, self.record_id = entry.list_us, entry.record_id
        self.shape_key, self._amounts = entry.shape_key, entry._amounts

    @classmethod
    def of(cls, list_us: int, record_id: int, shape_key: "ShapeKey", amounts: "Amounts") -> "IndexBasis":
        basis = cls.__new__(cls)
        basis.list_us, basis.record_id, basis.shape_key, basis._amounts = list_us, record_id, shape_key, amounts
        return basis

    @property
    def amounts(self) -> "Amounts":
        return self._amounts

    @property
    def _shape(self) -> _Shape:
        return shape_of(self.shape_key)

    def memberships(self) -> list[str]:
        return self._shape.memberships

    def increments(self) -> list[Increment]:
        return self._shape.increments(self._amounts)


# -- deltas ------------------------------------------------------------------------------------

_UNMOVED = b"[[],[],[]]"


def entry_delta(old: IndexEntry | IndexBasis, new: IndexEntry) -> bytes | None:
    """What replacing `old` by `new` changes, for the index script:
    [memberships to leave, memberships to join, [[rollup key, field, difference], ...]]
    (differences as strings, none that is 0). When the list time moved every membership of
    `new` is joined (ZADD scores it again). None when they are entries of two record ids
    (two members: `old` is not what the script finds under `new`'s)."""
    if old.record_id != new.record_id:
        return None
    if old.list_us != new.list_us:
        return _delta_by_field(old.memberships(), _increments(old.increments()), new, rescored=True)
    before, after = old._amounts, new._amounts
    differences = _differences(before, after)
    moved = _nonzero_slots(differences)
    if old.shape_key == new.shape_key:  # same keys and fields (the usual case): only amounts moved
        return new._shape.amounts_delta(moved).fill(differences) if moved else _UNMOVED
    template = _transition(old.shape_key, new.shape_key, _nonzero_slots(before), _nonzero_slots(after), moved)
    if template is None:  # not expressible as a template (see _field_change)
        return _delta_by_field(old.memberships(), _increments(old.increments()), new)
    return template.fill((*after, -before[0], -before[1], -before[2], -before[3], *differences))


# A transition template's values: the new entry's 4 amounts, the old one's negated, their differences.
_AFTER, _BEFORE_NEGATED, _DIFFERENCE = 0, 4, 8


class _Term(NamedTuple):
    """One entry's part in how a rollup field changes: its amount in `slot` taken away (sign -1,
    the old entry) or added (+1, the new one)."""

    sign: int
    slot: int


class _NotTemplated(Exception):
    """A field's change is none of what a transition template can hold."""


@lru_cache(maxsize=1024)  # the few transitions between the shapes of the moment (status, cost...)
def _transition(old: ShapeKey, new: ShapeKey, old_nonzero: SlotSet, new_nonzero: SlotSet,
                moved: SlotSet) -> _Template | None:
    """The delta from an entry of shape `old` to one of shape `new`, amounts nonzero in the slots
    `old_nonzero` and `new_nonzero`, and different in the slots `moved`, as `_delta_by_field`
    orders it: the memberships left and joined, then each field that changes. None when a field's
    change is not one a template holds (never, with the fields shapes have)."""
    old_shape, new_shape = shape_of(old), shape_of(new)
    changes: list[list[Any]] = []
    holes: list[int] = []
    try:
        for (key, name), terms in _terms_by_field(old_shape, old_nonzero, new_shape, new_nonzero).items():
            change = _field_change(terms, moved)
            if isinstance(change, str):
                changes.append([key, name, change])
            elif change is not None:
                changes.append([key, name, _HOLE])
                holes.append(change)
    except _NotTemplated:
        return None
    held, wanted = old_shape.memberships, new_shape.memberships
    return _Template([[s for s in held if s not in wanted], [s for s in wanted if s not in held], changes], holes)


def _terms_by_field(old: _Shape, old_nonzero: SlotSet, new: _Shape,
                    new_nonzero: SlotSet) -> dict[tuple[str, str], list[_Term]]:
    """For each rollup field either entry adds to, what each adds: the old entry's terms first,
    fields in the order they are first met (as `_delta_by_field` meets them)."""
    terms: dict[tuple[str, str], list[_Term]] = {}
    for shape, nonzero, sign in ((old, old_nonzero, -1), (new, new_nonzero, 1)):
        for key, name, slot in shape.items:
            if _has(nonzero, slot):
                terms.setdefault((key, name), []).append(_Term(sign, slot))
    return terms


def _field_change(terms: list[_Term], moved: SlotSet) -> str | int | None:
    """How one rollup field changes: a number known now (its text), the index of the value that
    fills it in, or None when it does not change."""
    if all(term.slot == _ONE for term in terms):  # counts: their amounts are 1
        difference = sum(term.sign for term in terms)
        return str(difference) if difference else None
    if len(terms) == 1:  # only one of the entries adds to it: its amount comes or goes
        sign, slot = terms[0]
        return _AFTER + slot if sign > 0 else _BEFORE_NEGATED + slot
    if len(terms) == 2 and terms[0] == _Term(-1, terms[1].slot) and terms[1].sign == 1:  # both, the same amount
        slot = terms[1].slot
        return _DIFFERENCE + slot if _has(moved, slot) else None
    raise _NotTemplated


def _increments(increments: list[Increment]) -> dict[tuple[str, str], int]:
    return {(key, name): amount for key, name, amount in increments}


def _delta_by_field(held: list[str], added: dict[tuple[str, str], int], new: IndexEntry,
                    rescored: bool = False) -> bytes:
    """The delta from an entry with memberships `held` that added `added` (rollup key and field:
    amount) to `new`, field by field (what `_transition` makes templates of). `rescored`: the
    list time moved, so every membership of `new` is joined (scored again)."""
    wanted = new.memberships()
    change = {field: -amount for field, amount in added.items()}
    for key, name, amount in new.increments():
        change[(key, name)] = change.get((key, name), 0) + amount
    return orjson.dumps([[s for s in held if s not in wanted],
                         list(wanted) if rescored else [s for s in wanted if s not in held],
                         [[key, name, str(d)] for (key, name), d in change.items() if d]])


def delta_from_stored(stored: bytes, member_text: str, score_text: str, new: IndexEntry) -> bytes:
    """The delta from the entry a shard holds (`stored`, of the call with that member, scored
    `score_text` in its lists) to `new`: what the index script applies when a writer has no basis of
    its own, or another writer's version is indexed. An entry with its rollups after a newline
    (written before layout 5, by this release or an earlier one) is undone from them as they were
    written; one of layout 5 (the lean payload alone) from the payload (`stored_contributions`)."""
    held, added, list_us = stored_contributions(stored, member_text, score_text)
    return _delta_by_field(held, added, new, rescored=list_us != new.list_us)


def stored_contributions(stored: bytes, member_text: str,
                         score_text: str) -> tuple[list[str], dict[tuple[str, str], int], int]:
    """What a stored entry adds to the index: (its memberships, {(rollup key, field): amount}, its
    list time). ValueError when it is not an entry this service wrote."""
    payload, newline, rollups = stored.partition(b"\n")
    if newline:
        memberships, by_key, written_score = orjson.loads(rollups)
        added = {(key, name): int(amount) for key, fields in by_key.items() for name, amount in fields.items()}
        return list(memberships), added, int(written_score)
    fields = orjson.loads(payload)
    try:  # the entry again, as IndexEntry derives its lists and amounts (the phone numbers play no part)
        list_us = int(fields["us"]) if "us" in fields else int(float(score_text))
        organization, duration, cost = fields.get("org"), fields.get("dur"), fields.get("c")
        entry = IndexEntry(fields.get("sid", ""), int(member_text), list_us,
                           None if organization is None else int(organization), int(fields["aid"]), None,
                           str(fields["st"]), None if duration is None else int(duration),
                           None if cost is None else int(cost), "", "")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("not an index entry") from exc
    return entry.memberships(), _increments(entry.increments()), list_us


class EntryPayload:
    """What a reader needs of a call's index entry without loading the call (`IndexEntry.payload`):
    its SID, list time and what the unindexed filters and search look at.

    Stored with short keys (`sid`, `us`, `org`, `aid`, `an`, `st`, `dur`, `cph`, `tph`: they are in
    every entry of every shard); this class is the only reader of them, so nothing above the core
    spells one. Each accessor gives what the stored JSON holds (None for a missing key): a reader
    checks a value's type before it trusts it, as the stored entry is data from Redis."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    @classmethod
    def decode(cls, stored: bytes) -> "EntryPayload":
        """The payload of a stored entry (see `IndexEntry.encode`), or of a payload's JSON alone."""
        return cls(orjson.loads(stored.partition(b"\n")[0]))

    @property
    def call_sid(self) -> Any:
        return self._fields.get("sid")

    @property
    def list_us(self) -> Any:
        return self._fields.get("us")

    @property
    def organization_id(self) -> Any:
        return self._fields.get("org")

    @property
    def assistant_id(self) -> Any:
        return self._fields.get("aid")

    @property
    def assistant_name(self) -> Any:
        return self._fields.get("an")

    @property
    def status(self) -> Any:
        return self._fields.get("st")

    @property
    def duration(self) -> Any:
        return self._fields.get("dur")

    @property
    def customer_phone_number(self) -> Any:
        return self._fields.get("cph")

    @property
    def to_phone_number(self) -> Any:
        return self._fields.get("tph")


def list_us(state: CallState) -> int:
    if state.started is not None:
        return int(state.started[0])
    return state.first_seen if state.first_seen is not None else 0


def index_entry(call_sid: str, record_id: int, state: CallState, policy: Policy,
                record: dict[str, Any] | None = None) -> IndexEntry:
    """The call's entry, from its state as committed (`state` must hold the index registers),
    or from the record rendered from that state."""
    if record is None:
        record = render_record(call_sid, record_id, state, policy)
    organization = state.registers.get("organization_id")
    return IndexEntry(  # positional: keywords cost the worker's apply loop a little more
        call_sid, record_id, list_us(state), organization[3] if organization else None,
        record["assistant_id"], record["assistant_name"], record["status"], record["duration"],
        record["total_cost"], record["to_phone_number"], record["customer_phone_number"])


def score(us: int) -> float:
    """A sorted-set score: exact for any instant within ±285 years of 1970 (2^53 µs)."""
    return float(us)


# The registers a record and its entry are rendered from: a worker loads them with every call
# it applies, so that it can render the record at commit, and index a call whose events
# were all duplicates (the repair path).
RECORD_FIELDS = tuple(REGISTER_FIELD + name for name in REGISTERS)


# -- cursors --------------------------------------------------------------------------------

# A list cursor's score is a list time in microseconds as Redis writes a score (an integer up to
# 2^53 in every version seen; a fraction or an exponent allowed, in case one writes them), and
# its member a record id of MEMBER_WIDTH digits: ASCII digits only, bounded, so Redis never
# meets a number it reads otherwise than Python did (`1_0`, ` 10`, Arabic-Indic digits, `1e999`).
_SCORE_TEXT = re.compile(r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,17})?(?:e[+-]?[0-9]{1,3})?")
_MEMBER_TEXT = re.compile(rf"[0-9]{{{MEMBER_WIDTH}}}")
_MAX_SCORE = 2**53  # scores are exact instants within it (`score`)
MAX_LIST_CURSOR = 96  # characters: far more than a score and a member need


def encode_cursor(score_text: str, member_text: str) -> str:
    """An opaque cursor naming the last item of a page: its score (as Redis wrote it) and id."""
    return cursors.encode(f"{score_text}/{member_text}".encode())


class ListCursor(NamedTuple):
    """Where a list page ends: the last item's score, as Redis wrote it, and its member (record id)."""

    score_text: str
    member: str


def decode_cursor(cursor: str) -> ListCursor:
    """The score text and member a cursor names; ValueError when it is not one this service gave out
    (call_ledger.core.cursors: canonical, bounded; then a score and a member of the shapes above)."""
    raw = cursors.decode(cursor, MAX_LIST_CURSOR)
    score_text, sep, member_text = raw.decode("ascii", "replace").partition("/")
    if not sep or not _SCORE_TEXT.fullmatch(score_text) or not _MEMBER_TEXT.fullmatch(member_text):
        raise ValueError("not a cursor")
    if abs(Decimal(score_text)) > _MAX_SCORE:  # exactly: a float would round 2^53 + 1 down to it
        raise ValueError("not a cursor")
    return ListCursor(score_text, member_text)
