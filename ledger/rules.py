"""The ledger's rules (SPEC §5): fold events into a call's state, render the record.

Every piece of `CallState` is a join-semilattice: a max, a min, a sum of distinct
events, or a last-writer-wins register ordered by (occurred_at, event_id). Applying
the same set of events in any order therefore gives the same state, and the store
applies each event id once. Everything here is pure and synchronous.
"""

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

from ledger.errors import Unapplicable
from ledger.events import COMPONENTS, STATUSES, TERMINAL_STATUSES, CallEvent
from ledger.money import NANO, convert, format_nano
from ledger.pricing import telephony_charge
from ledger.settings import Settings

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
_TERMINAL_RANK = min(STATUS_RANK[s] for s in TERMINAL_STATUSES)

# Fields set by "the event with the latest occurred_at, ties broken by the larger event_id".
REGISTERS = (
    "direction",
    "from_number",
    "to_number",
    "assistant_id",
    "assistant_name",
    "flow_name",
    "to_phone_number",
    "customer_phone_number",
)


@dataclass
class CallState:
    """Everything the record is derived from; stored as JSON in the call's hash."""

    # max of (rank, occurred_us, event_id, occurred_at text) over status events
    status: list[Any] | None = None
    # min of (occurred_us, text) over status events / over answer events
    started: list[Any] | None = None
    answered: list[Any] | None = None
    duration: int | None = None  # the largest connected duration reported
    costs: dict[str, int] = field(default_factory=dict)  # component -> nano-units, ledger currency
    # field -> [occurred_us, event_id, value]; "provider" is the telephony source of the call
    registers: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, list[Any]] = field(default_factory=dict)  # call_meta key -> [occurred_us, event_id, value]

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "CallState":
        return cls(**orjson.loads(raw)) if raw else cls()


def ledger_costs(event: CallEvent, settings: Settings) -> list[tuple[str, int]]:
    """The event's costs in the ledger currency; Unapplicable when a rate is missing."""
    converted: list[tuple[str, int]] = []
    for cost in event.costs:
        amount = cost.amount_nano
        if cost.currency != settings.currency:
            rate = settings.fx_rates.get(cost.currency)
            if rate is None:
                raise Unapplicable(
                    f"cost in {cost.currency} and no LEDGER_FX_RATES entry converts it to {settings.currency}"
                )
            amount = convert(amount, rate)
        converted.append((cost.component, amount))
    return converted


def _set_register(registers: dict[str, list[Any]], name: str, event: CallEvent, value: object) -> None:
    current = registers.get(name)
    if current is None or (event.occurred_us, event.event_id) > (current[0], current[1]):
        registers[name] = [event.occurred_us, event.event_id, value]


def _earliest(current: list[Any] | None, us: int, text: str | None) -> list[Any]:
    """The min of two (microseconds, text) instants; text breaks ties so order never matters."""
    candidate = [us, text]
    return candidate if current is None or candidate < current else current


def apply_event(state: CallState, event: CallEvent, settings: Settings) -> None:
    """Fold one event (never applied to this call before) into the state, in place.

    Raises Unapplicable, leaving the state untouched, when the event cannot be applied.
    """
    costs = ledger_costs(event, settings)  # may raise: before any change
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
    for component, amount in costs:
        state.costs[component] = state.costs.get(component, 0) + amount

    if event.source != "platform":
        _set_register(state.registers, "provider", event, event.source)
    for name in REGISTERS:
        value = getattr(event, name)
        if value is not None:
            _set_register(state.registers, name, event, value)
    for key, value in (event.call_meta or {}).items():
        _set_register(state.meta, key, event, value)


def _value(state: CallState, name: str) -> Any:
    register = state.registers.get(name)
    return None if register is None else register[2]


def connected_duration(state: CallState) -> int | None:
    """Largest reported duration, else hang-up - first answer, else 0 if ended unanswered."""
    if state.duration is not None:
        return state.duration
    if state.status is None or state.status[0] < _TERMINAL_RANK:
        return None
    if state.answered is None:
        return 0
    seconds = Decimal(state.status[1] - state.answered[0]) / 1_000_000
    return max(0, int(seconds.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)))


def telephony_estimate(state: CallState, duration: int | None, settings: Settings) -> int | None:
    """Rate-card estimate for a terminal call with no reported charge: ceil(duration/60) minutes."""
    if state.status is None or state.status[0] < _TERMINAL_RANK or duration is None:
        return None
    provider = _value(state, "provider")
    direction = _value(state, "direction") or "inbound"
    minutes = math.ceil(duration / 60)
    # A telephony entry of LEDGER_PRICING_FILE wins over LEDGER_TELEPHONY_RATES; it is picked
    # by the call's start, so an entry added for the future reprices no past call.
    charge = telephony_charge(settings.pricing, provider, direction, minutes,
                              state.started[0] if state.started else state.status[1])
    if charge is not None:
        amount, currency = charge
        # Settings refuses a file whose currencies have no FX rate.
        return amount if currency == settings.currency else convert(amount, settings.fx_rates[currency])
    rate = settings.telephony_rates.get((provider, direction))
    if rate is None:
        return None
    return int((rate * NANO * minutes).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def render_record(call_sid: str, record_id: int, state: CallState, settings: Settings) -> dict[str, Any]:
    """The read API's 18 fields; money as integer nano-units (the encoder writes decimals)."""
    direction = _value(state, "direction") or "inbound"  # SPEC §4: inbound while unknown
    raw_from, raw_to = _value(state, "from_number"), _value(state, "to_number")
    ours, theirs = (raw_to, raw_from) if direction == "inbound" else (raw_from, raw_to)
    to_phone = _value(state, "to_phone_number") or ours or ""
    customer_phone = _value(state, "customer_phone_number") or theirs or ""

    terminal = state.status is not None and state.status[0] >= _TERMINAL_RANK
    duration = connected_duration(state)
    costs: dict[str, int | None] = {c: state.costs.get(c) for c in COMPONENTS}
    if costs["telephony"] is None:
        costs["telephony"] = telephony_estimate(state, duration, settings)
    present = [amount for amount in costs.values() if amount is not None]
    return {
        "call_sid": call_sid,
        "to_phone_number": to_phone,
        "customer_phone_number": customer_phone,
        "id": record_id,
        "assistant_id": _value(state, "assistant_id") or 0,
        "status": RANK_STATUS[state.status[0]] if state.status else "initiated",
        "call_meta": {key: register[2] for key, register in sorted(state.meta.items())},
        "assistant_name": _value(state, "assistant_name"),
        "flow_name": _value(state, "flow_name"),
        "duration": duration,
        "started_at": state.started[1] if state.started else None,
        "ended_at": state.status[3] if terminal and state.status else None,
        "total_cost": sum(present) if present else None,
        "llm_cost": costs["llm"],
        "tts_cost": costs["tts"],
        "stt_cost": costs["stt"],
        "telephony_cost": costs["telephony"],
        "cost_currency": settings.currency if present else None,
    }


MONEY_FIELDS = ("total_cost", "llm_cost", "tts_cost", "stt_cost", "telephony_cost")


def record_json(record: dict[str, Any]) -> bytes:
    """Encode a rendered record; money goes out as exact decimal literals (0.1 + 0.2 → 0.3)."""
    plain = orjson.dumps({k: v for k, v in record.items() if k not in MONEY_FIELDS})
    money = b"".join(
        b',"' + name.encode() + b'":' + (b"null" if record[name] is None else format_nano(record[name]).encode())
        for name in MONEY_FIELDS
    )
    return plain[:-1] + money + b"}"
