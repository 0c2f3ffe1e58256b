"""The ledger's rules (SPEC §5): fold events into a call's state, render the record.

Every piece of `CallState` is a join-semilattice: a max, a min, a sum of distinct
events, or a last-writer-wins register ordered by (occurred_at, event_id, source).
Applying the same set of events in any order therefore gives the same state, and the
store applies each (source, event id) once. Everything here is pure and synchronous.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

import orjson

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import COMPONENTS, STATUSES, TERMINAL_STATUSES, CallEvent
from call_ledger.core.members import full_provenance, short_provenance
from call_ledger.core.money import MAX_AMOUNT_NANO, NANO, convert, format_nano
from call_ledger.core.plain import FIRST_SEEN, core_of_hash, core_of_plain, plain_fields, plain_snapshot
from call_ledger.core.policy import Policy
from call_ledger.core.pricing import telephony_charge

# initiated < ringing < ongoing < every terminal status; among terminal ones the
# order is fixed so that two different endings give the same answer in any order.
STATUS_RANK = {
    "initiated": 0,
    "ringing": 1,
    "ongoing": 2,
    "canceled": 3,
    "no-answer": 4,
    "busy": 5,
    "failed": 6,
    "completed": 7,
}
RANK_STATUS = {rank: status for status, rank in STATUS_RANK.items()}
assert set(STATUS_RANK) == set(STATUSES)
TERMINAL_RANK = min(STATUS_RANK[s] for s in TERMINAL_STATUSES)

# Fields set by "the event with the latest occurred_at, ties broken by the larger event_id".
REGISTERS = (
    "direction",
    "from_number",
    "to_number",
    "assistant_id",
    "organization_id",
    "assistant_name",
    "flow_name",
    "to_phone_number",
    "customer_phone_number",
)


# Where each piece of the state lives in the call's Redis hash (see `call_ledger.store.records`): the core
# (small, bounded) is one field, every register and every call_meta key a field of its own.
# A commit rewrites the core and only the registers and keys its events won, so what one
# event writes stays proportional to the event, whatever the size of the call.
REGISTER_FIELD = "r:"
META_FIELD = "m:"


@dataclass
class CallState:
    """Everything the record is derived from.

    `registers` and `meta` hold `[occurred_us, event_id, source, value]`: the value of the
    event that is latest by (occurred_us, event_id, source). A worker loads only the
    registers and keys its events touch; `changed` names the fields it must write back.
    """

    # max of (rank, occurred_us, event_id, occurred_at text) over status events
    status: list[Any] | None = None
    # min of (occurred_us, text) over status events / over answer events
    started: list[Any] | None = None
    answered: list[Any] | None = None
    duration: int | None = None  # the largest connected duration reported
    # min occurred_us over every event: the list time of a call with no status event (SPEC §9)
    first_seen: int | None = None
    costs: dict[str, int] = field(default_factory=dict)  # component -> nano-units, ledger currency
    # The call's telephony provider: the source of the first provider event applied (SPEC §8:
    # a call has one; another provider's events are refused).
    provider: str | None = None
    # Size of the merged call_meta (keys, and bytes of JSON text), for its per-call bound.
    meta_keys: int = 0
    meta_bytes: int = 0
    registers: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, list[Any]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set, compare=False, repr=False)
    # The rate-card telephony estimate [nano-units or None, the per-minute rate's text or None],
    # fixed by the worker at each commit (`fix_estimate`), so every reader (the record, the
    # indexes' rollups, /costs) shows the one computed with the rates the events were applied
    # under. None: a state never committed with it (older records): computed when read.
    estimate: list[Any] | None = field(default=None, compare=False)
    # The ledger currency the costs are in, fixed with the estimate: layout 4 renders the record when read
    # (core.plain), and a reader with another LEDGER_CURRENCY (a `deliver`, an archive job) must show what the
    # worker applied. None: not fixed (layouts 2 and 3, whose rendered copy says it): the reader's. Not in
    # the core JSON, which a release before layout 4 rebuilds with exactly the names of CORE.
    currency: str | None = field(default=None, compare=False)

    CORE = ("status", "started", "answered", "duration", "first_seen", "costs", "provider", "meta_keys",
            "meta_bytes", "estimate")

    def core_json(self) -> bytes:
        return orjson.dumps({name: getattr(self, name) for name in self.CORE})

    def plain_fields(self, call_sid: str, since: tuple[Any, ...] | None = None) -> list[tuple[str, bytes]]:
        """The core as layout 4's plain hash fields (core.plain), in place of `core_json`; with `since`
        (`plain_snapshot`), those that changed since."""
        return plain_fields(self, call_sid, since)

    def plain_snapshot(self) -> tuple[Any, ...]:
        """The core as it is now, for `plain_fields(since=)`."""
        return plain_snapshot(self)

    def changed_fields(self, short_for: str | None = None) -> list[tuple[str, bytes]]:
        """(hash field, JSON) of every register and call_meta key changed since loading; with `short_for`
        (the call's SID, in a store of layout 3) each names its event by its short member
        (core.members.short_provenance)."""
        out = []
        for name in sorted(self.changed):
            register = self.registers[name[2:]] if name.startswith(REGISTER_FIELD) else self.meta[name[2:]]
            out.append((name, orjson.dumps(register if short_for is None else short_provenance(register, short_for))))
        return out

    @classmethod
    def from_fields(cls, core: bytes | str | None, fields: Mapping[str, bytes | None] | None = None,
                    call_sid: str | None = None, provenance: bool = True) -> "CallState":
        """Rebuild from the core JSON, else (layout 4) the plain core fields among `fields`
        (core.plain), and any `r:`/`m:` fields (those not given are unknown), each in either form
        (core.members.full_provenance: a short one needs `call_sid`). Without `provenance` the
        registers keep the event they came from as stored (short or long): enough to render, not to fold."""
        fields = fields or {}
        if core:
            state = cls(**orjson.loads(core))
        elif fields.get(FIRST_SEEN) is not None:
            if call_sid is None:
                raise ValueError("a call's plain fields are read with its call's SID")
            state = cls(**core_of_plain(fields, call_sid))
        else:
            state = cls()
        for name, raw in fields.items():
            if raw is None:
                continue
            if name.startswith(REGISTER_FIELD):
                register = orjson.loads(raw)
                state.registers[name[2:]] = full_provenance(register, call_sid) if provenance else register
            elif name.startswith(META_FIELD):
                register = orjson.loads(raw)
                state.meta[name[2:]] = full_provenance(register, call_sid) if provenance else register
        return state

    def parts(self) -> tuple[Any, ...]:
        """Everything but `changed`, as plain values (lists, dicts, str, int, None): what a cache
        encodes (worker/apply.py KnownCalls, with marshal); `of_parts` rebuilds the state."""
        return (self.status, self.started, self.answered, self.duration, self.first_seen, self.costs, self.provider,
                self.meta_keys, self.meta_bytes, self.registers, self.meta, self.estimate, self.currency)

    @classmethod
    def of_parts(cls, parts: tuple[Any, ...]) -> "CallState":
        """The state `parts()` was taken of, from a decoded copy of them (which it then owns)."""
        status, started, answered, duration, first_seen, costs, provider, meta_keys, meta_bytes, registers, meta, \
            estimate, currency = parts
        return cls(status, started, answered, duration, first_seen, costs, provider, meta_keys, meta_bytes,
                   registers, meta, estimate=estimate, currency=currency)

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes], call_sid: str | None = None,
                  provenance: bool = True) -> "RecordState | None":
        """The record id and whole state from a call hash as HGETALL returns it (any layout); None
        without a record. `provenance`: as `from_fields`."""
        if not has_record(fields):
            return None
        # As from_fields, without decoding every field's name: a lookup renders from here (layout 4).
        core = fields.get(b"s")
        if core is not None:
            state = cls(**orjson.loads(core))
        elif call_sid is None:
            raise ValueError("a call's plain fields are read with its call's SID")
        else:
            state = cls(**core_of_hash(fields, call_sid))
        registers, meta, loads = state.registers, state.meta, orjson.loads
        for name, raw in fields.items():
            if name.startswith(_REGISTER):
                registers[name[2:].decode()] = full_provenance(loads(raw), call_sid) if provenance else loads(raw)
            elif name.startswith(_META):
                meta[name[2:].decode()] = full_provenance(loads(raw), call_sid) if provenance else loads(raw)
        return RecordState(int(fields[b"id"]), state)


def has_record(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a call hash as HGETALL returns it holds a record: an id and a state, as one JSON field
    (`s`, layouts 2 and 3) or plain fields (layout 4: core.plain). An archived call's tombstone has neither."""
    return b"id" in fields and (b"s" in fields or _FIRST_SEEN in fields)


_FIRST_SEEN = FIRST_SEEN.encode()
_REGISTER, _META = REGISTER_FIELD.encode(), META_FIELD.encode()


class RecordState(NamedTuple):
    """A call with a record, as its hash holds it: the record id and the whole state."""

    record_id: int
    state: CallState


class MetaSize(NamedTuple):
    """The size of a call_meta object as its per-call bound counts it."""

    keys: int
    json_bytes: int  # of its JSON text


class LedgerCost(NamedTuple):
    """One of an event's costs, in the ledger currency."""

    component: str
    amount_nano: int


class Estimate(NamedTuple):
    """The rate-card telephony estimate of a call (both None: none)."""

    amount_nano: int | None
    rate: str | None  # the per-minute rate as decimal text in the ledger currency; None if priced in another


def meta_entry_size(key: str, value: object) -> int:
    """Bytes one call_meta key adds to the record's JSON text: `"key":value,`."""
    return len(orjson.dumps(key)) + len(orjson.dumps(value)) + 2


def call_meta_size(meta: dict[str, object]) -> MetaSize:
    """The keys and bytes of JSON text of a call_meta object, as the per-call bound counts them."""
    return MetaSize(len(meta), 2 + sum(meta_entry_size(key, value) for key, value in meta.items()))


def ledger_costs(event: CallEvent, policy: Policy) -> list[LedgerCost]:
    """The event's costs in the ledger currency; Unapplicable when a rate is missing."""
    converted: list[LedgerCost] = []
    for cost in event.costs:
        amount = cost.amount_nano
        if cost.currency != policy.currency:
            rate = policy.fx_rates.get(cost.currency)
            if rate is None:
                raise Unapplicable(
                    f"cost in {cost.currency} and no LEDGER_FX_RATES entry converts it to {policy.currency}"
                )
            amount = convert(amount, rate)
        converted.append(LedgerCost(cost.component, amount))
    return converted


def check_sums(state: CallState, costs: list[LedgerCost], currency: str) -> dict[str, int]:
    """Refused unless the event's costs, each of the call's components after it, and the call's
    reported total after it all stay within MAX_AMOUNT_NANO (SPEC §14).

    Each amount is bounded at intake, but sums are not: without this, 19 events of 10^9 took a
    component past 64 bits, which no encoder of the core state (nor an index rollup) can hold,
    and the commit of the whole batch raised. Within the bound, every sum of the record, its
    index entry and the rollups stays exact in a signed 64-bit integer (and, in whole units, in
    a Lua number)."""
    bound = f"{MAX_AMOUNT_NANO // NANO} {currency}"
    if sum(amount for _, amount in costs) > MAX_AMOUNT_NANO:
        raise Refused(f"the event's costs sum past {bound} (the bound on a call's costs)")
    after = dict(state.costs)
    for component, amount in costs:
        after[component] = after.get(component, 0) + amount
        if after[component] > MAX_AMOUNT_NANO:
            raise Refused(f"the call's {component} cost would pass {bound}")
    if sum(after.values()) > MAX_AMOUNT_NANO:
        raise Refused(f"the call's total cost would pass {bound}")
    return after


# Beyond half the bound, an event that could change a call's telephony estimate is checked with
# the estimate it would give. Below it, no estimate can reach the bound: that would take a rate
# of 30 units a minute over MAX_SECONDS (10^9 s), far past any telephony price.
_ESTIMATE_CHECKED_FROM = MAX_AMOUNT_NANO // 2


def check_estimate(state: CallState, event: CallEvent, after: dict[str, int], policy: Policy) -> None:
    """Refused if the call's total, with the rate-card telephony estimate the event would make
    it carry (a hang-up with a duration, say), would pass MAX_AMOUNT_NANO (SPEC §14)."""
    total = sum(after.values())
    if "telephony" in after or total <= _ESTIMATE_CHECKED_FROM:
        return
    trial = CallState(status=state.status, started=state.started, answered=state.answered, duration=state.duration,
                      provider=state.provider)
    if "direction" in state.registers:
        trial.registers["direction"] = state.registers["direction"]
    _fold_times(trial, event)
    if event.source != "platform" and trial.provider is None:
        trial.provider = event.source
    if event.direction is not None and _wins(trial.registers.get("direction"), event):
        trial.registers["direction"] = [event.occurred_us, event.event_id, event.source, event.direction]
    estimate = telephony_estimate(trial, connected_duration(trial), policy)[0] or 0
    if total + estimate > MAX_AMOUNT_NANO:
        raise Refused(f"the call's total cost with its telephony estimate would pass "
                      f"{MAX_AMOUNT_NANO // NANO} {policy.currency}")


def _wins(current: list[Any] | None, event: CallEvent) -> bool:
    return current is None or (event.occurred_us, event.event_id, event.source) > tuple(current[:3])


def _earliest(current: list[Any] | None, us: int, text: str | None) -> list[Any]:
    """The min of two (microseconds, text) instants; text breaks ties so order never matters."""
    candidate = [us, text]
    return candidate if current is None or candidate < current else current


def _check_bounds(state: CallState, event: CallEvent, policy: Policy) -> MetaSize:
    """Refused (state untouched) if the event breaks a per-call rule; else call_meta's new size."""
    if event.source != "platform" and state.provider not in (None, event.source):
        raise Refused(f"call is attributed to {state.provider}; a {event.source} event cannot change it")
    keys, size = state.meta_keys, state.meta_bytes
    for key, value in (event.call_meta or {}).items():
        current = state.meta.get(key)
        if _wins(current, event):
            if current is None:
                keys += 1
            else:
                size -= meta_entry_size(key, current[3])
            size += meta_entry_size(key, value)
    if keys > policy.max_call_meta_keys or size + 2 > policy.max_call_meta_bytes:
        raise Refused(f"call_meta of this call would exceed {policy.max_call_meta_keys} keys or "
                      f"{policy.max_call_meta_bytes} bytes")
    return MetaSize(keys, size)


def apply_event(state: CallState, event: CallEvent, policy: Policy) -> None:
    """Fold one event (never applied to this call before) into the state, in place.

    `state` must hold every register and the meta keys the event touches (worker/apply.py `wanted_meta`).
    Raises Unapplicable (or Refused), leaving the state untouched, when the event cannot be applied.
    """
    costs = ledger_costs(event, policy)  # may raise: before any change
    check_estimate(state, event, check_sums(state, costs, policy.currency), policy)
    meta_keys, meta_bytes = _check_bounds(state, event, policy)
    us = event.occurred_us
    _fold_times(state, event)
    for component, amount in costs:
        state.costs[component] = state.costs.get(component, 0) + amount
    if state.first_seen is None or us < state.first_seen:
        state.first_seen = us

    if event.source != "platform" and state.provider is None:
        state.provider = event.source
    _set_registers(state, event)
    state.meta_keys, state.meta_bytes = meta_keys, meta_bytes


def _fold_times(state: CallState, event: CallEvent) -> None:
    """The event's status, start, answer and duration into the state (max, min, max)."""
    us, text = event.occurred_us, event.occurred_at
    if event.status is not None:
        rank = STATUS_RANK[event.status]
        candidate = [rank, us, event.event_id, text]
        if state.status is None or candidate[:3] > state.status[:3]:
            state.status = candidate
        state.started = _earliest(state.started, us, text)
        if event.status == "ongoing":
            state.answered = _earliest(state.answered, us, text)
    if event.started_us is not None:
        state.started = _earliest(state.started, event.started_us, event.started_at)
    if event.answered_us is not None:
        state.answered = _earliest(state.answered, event.answered_us, event.answered_at)
    if event.duration is not None and (state.duration is None or event.duration > state.duration):
        state.duration = event.duration


def _set_registers(state: CallState, event: CallEvent) -> None:
    """Last writer wins, per register and per call_meta key; the winners are marked changed."""
    us = event.occurred_us
    for name in REGISTERS:
        value = getattr(event, name)
        if value is not None and _wins(state.registers.get(name), event):
            state.registers[name] = [us, event.event_id, event.source, value]
            state.changed.add(REGISTER_FIELD + name)
    for key, value in (event.call_meta or {}).items():
        if _wins(state.meta.get(key), event):
            state.meta[key] = [us, event.event_id, event.source, value]
            state.changed.add(META_FIELD + key)


def _value(state: CallState, name: str) -> Any:
    register = state.registers.get(name)
    return None if register is None else register[3]


def connected_duration(state: CallState) -> int | None:
    """Largest reported duration, else hang-up - first answer, else 0 if ended unanswered."""
    return duration_of(state.duration, state.status, state.answered)


def duration_of(duration: int | None, status: list[Any] | None, answered: list[Any] | None) -> int | None:
    """`connected_duration` of a state's duration, status and answer (what a lookup renders from: core.served)."""
    if duration is not None:
        return duration
    if status is None or status[0] < TERMINAL_RANK:
        return None
    if answered is None:
        return 0
    seconds = Decimal(status[1] - answered[0]) / 1_000_000
    return max(0, int(seconds.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)))


def telephony_estimate(state: CallState, duration: int | None,
                       policy: Policy) -> Estimate:
    """Rate-card estimate for a terminal call with no reported charge: ceil(duration/60) minutes."""
    if state.status is None or state.status[0] < TERMINAL_RANK or duration is None:
        return _NO_ESTIMATE
    if state.provider is None:
        return _NO_ESTIMATE
    direction = _value(state, "direction") or "inbound"
    minutes = math.ceil(duration / 60)
    # A telephony entry of LEDGER_PRICING_FILE wins over LEDGER_TELEPHONY_RATES; it is picked
    # by the call's start, so an entry added for the future reprices no past call.
    charge = telephony_charge(policy.pricing, state.provider, direction, minutes,
                              state.started[0] if state.started else state.status[1])
    if charge is not None:
        amount, currency, unit_cost = charge
        if currency == policy.currency:
            return Estimate(amount, unit_cost)
        # Settings refuses a file whose currencies have no FX rate.
        return Estimate(convert(amount, policy.fx_rates[currency]), None)
    rate = policy.telephony_rates.get((state.provider, direction))
    if rate is None:
        return _NO_ESTIMATE
    return Estimate(int((rate * NANO * minutes).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), str(rate))


_NO_ESTIMATE = Estimate(None, None)


def fix_estimate(state: CallState, policy: Policy) -> None:
    """Fix the telephony estimate and the ledger currency with this policy (the worker, before each commit)."""
    state.currency = policy.currency
    state.estimate = list(telephony_estimate(state, connected_duration(state), policy))


def estimate_of(state: CallState, duration: int | None, policy: Policy) -> Estimate:
    """The telephony estimate: as fixed at the last commit, else now."""
    if state.estimate is not None:
        return Estimate(state.estimate[0], state.estimate[1])
    return telephony_estimate(state, duration, policy)


def render_record(call_sid: str, record_id: int, state: CallState, policy: Policy) -> dict[str, Any]:
    """The read API's 18 fields; money as integer nano-units (the encoder writes decimals)."""
    duration = connected_duration(state)
    costs: dict[str, int | None] = {c: state.costs.get(c) for c in COMPONENTS}
    if costs["telephony"] is None:
        costs["telephony"] = estimate_of(state, duration, policy)[0]
    return assemble_record(call_sid, record_id, [_value(state, name) for name in SHOWN_REGISTERS], state.status,
                           state.started, duration, costs, state.currency or policy.currency,
                           {key: register[3] for key, register in sorted(state.meta.items())})


# The registers a record shows, in the order `assemble_record` takes their values.
SHOWN_REGISTERS = ("direction", "from_number", "to_number", "to_phone_number", "customer_phone_number",
                   "assistant_id", "assistant_name", "flow_name")


def assemble_record(call_sid: str, record_id: int, shown: list[Any], status: list[Any] | None,
                    started: list[Any] | None, duration: int | None, costs: dict[str, int | None], currency: str,
                    meta: dict[str, Any]) -> dict[str, Any]:
    """The record from what it shows: the SHOWN_REGISTERS' values, the status, start and duration, the costs by
    component (telephony's estimate in place), the ledger currency and call_meta. `render_record` from a state,
    and a lookup of layout 4 straight from the call's fields (core.served), both end here."""
    direction, raw_from, raw_to, to_phone, customer_phone, assistant_id, assistant_name, flow_name = shown
    if (direction or "inbound") == "inbound":  # SPEC §4: inbound while unknown
        ours, theirs = raw_to, raw_from
    else:
        ours, theirs = raw_from, raw_to
    terminal = status is not None and status[0] >= TERMINAL_RANK
    present = [amount for amount in costs.values() if amount is not None]
    return {
        "call_sid": call_sid,
        "to_phone_number": to_phone or ours or "",
        "customer_phone_number": customer_phone or theirs or "",
        "id": record_id,
        "assistant_id": assistant_id or 0,
        "status": RANK_STATUS[status[0]] if status else "initiated",
        "call_meta": meta,
        "assistant_name": assistant_name,
        "flow_name": flow_name,
        "duration": duration,
        "started_at": started[1] if started else None,
        "ended_at": status[3] if terminal and status else None,
        "total_cost": sum(present) if present else None,
        "llm_cost": costs["llm"],
        "tts_cost": costs["tts"],
        "stt_cost": costs["stt"],
        "telephony_cost": costs["telephony"],
        "cost_currency": currency if present else None,
    }


MONEY_FIELDS = ("total_cost", "llm_cost", "tts_cost", "stt_cost", "telephony_cost")


def record_json(record: dict[str, Any]) -> bytes:
    """Encode a rendered record; money goes out as exact decimal literals (0.1 + 0.2 → 0.3),
    after the other keys."""
    out = {key: value for key, value in record.items() if key not in _MONEY}
    for name in MONEY_FIELDS:
        amount = record[name]
        out[name] = None if amount is None else orjson.Fragment(format_nano(amount))
    return orjson.dumps(out)


_MONEY = frozenset(MONEY_FIELDS)
