"""The normalised call event: what every source's payload becomes at intake.

Intake turns a provider's or the platform's webhook into one `CallEvent`, writes it
to the stream as JSON, and the worker applies it to the call's state. The event
carries facts in the source's terms (its raw from/to and direction, amounts in the
currency it was charged in); the ledger's rules (`call_ledger.core.rules`) decide what they
mean for the record.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["initiated", "ringing", "ongoing", "completed", "busy", "no-answer", "canceled", "failed"]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})
Direction = Literal["inbound", "outbound"]
Component = Literal["llm", "tts", "stt", "telephony"]
MAX_CALL_SID = 512
MAX_EVENT_ID = 1024
# Bound on the text registers (names, numbers): a record stays small whatever is posted.
MAX_TEXT = 1024
MAX_SECONDS = 10**9  # far beyond any call; keeps every stored integer inside 64 bits
COMPONENTS: tuple[str, ...] = Component.__args__  # type: ignore[attr-defined]
MAX_LABEL = 256  # provider, model and usage_type names: far beyond any real one, bounded for storage


def _is_none(value: object) -> bool:
    return value is None


def _is_empty(value: object) -> bool:
    return not value


# Usage-pricing detail (SPEC §11) is left out of the JSON when absent, so an event without
# it serialises byte for byte as before: nothing changes for stored events, the journal's
# size or workers of the previous version reading the stream.
def _detail() -> Any:
    return Field(default=None, exclude_if=_is_none)


class PriceRef(BaseModel):
    """The pricing-file entry a usage line was priced by, frozen with the applied event:
    enough to see (and recompute) the price even after the file has changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: Component
    provider: str
    model: str  # "*" for an any-model entry
    usage_type: str
    effective_from: str | None  # None: in effect always
    unit_price: str  # exact decimal text, per unit_quantity, in currency
    unit_quantity: str
    currency: str


class UsageLine(BaseModel):
    """One usage quantity a platform `call.usage` reported without a cost; the worker
    prices it (call_ledger.core.pricing) when it applies the event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: Component
    # Required to price a line; None only on lines kept as information beside a reported cost.
    provider: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL)
    usage_type: str = Field(min_length=1, max_length=MAX_LABEL)
    usage_amount: str = Field(pattern=r"^[0-9]+(\.[0-9]+)?$")  # exact, non-negative decimal text


class Cost(BaseModel):
    """One charge, in the currency it was given in (converted when applied)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: Component
    amount_nano: int = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    # Where the charge came from (SPEC §9 /costs, §11), when known. A priced usage line
    # has all of them; a reported cost may carry provider/model/usage as information.
    provider: str | None = _detail()
    model: str | None = _detail()
    usage_type: str | None = _detail()
    usage_amount: str | None = _detail()  # exact decimal text
    unit_cost: str | None = _detail()  # unit_price / unit_quantity, decimal text
    price_entry: PriceRef | None = _detail()
    # Frozen by the worker when it applies a cost in another currency than the ledger's, on the
    # event it journals (never on what intake writes): the LEDGER_FX_RATES rate it converted with
    # (decimal text) and the amount it counted, in the ledger currency. /costs shows these, so its
    # entries add up to the record whatever the rates are later (SPEC §14).
    fx_rate: str | None = Field(default=None, exclude_if=_is_none, pattern=r"^-?[0-9]+(\.[0-9]+)?$")
    ledger_amount_nano: int | None = Field(default=None, exclude_if=_is_none, ge=0)


class CallEvent(BaseModel):
    """One thing a source said about one call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    # Bounded so that every id intake accepts can also be looked up (the read API takes up to 512).
    event_id: str = Field(min_length=1, max_length=MAX_EVENT_ID)
    call_sid: str = Field(min_length=1, max_length=MAX_CALL_SID)
    type: str  # the source's own name for the event, e.g. "call.hangup"; for people reading /events
    occurred_at: str  # canonical UTC text at the source's precision
    occurred_us: int  # the same instant in microseconds since the epoch, for comparisons

    status: Status | None = None
    direction: Direction | None = None
    # Provider view: who called whom. The read API derives the platform's view.
    from_number: str | None = Field(default=None, max_length=MAX_TEXT)
    to_number: str | None = Field(default=None, max_length=MAX_TEXT)
    duration: int | None = Field(default=None, ge=0, le=MAX_SECONDS)  # connected seconds, as reported
    # When a callback reports the call's start / answer time itself (Plivo's hang-up carries
    # StartTime and AnswerTime), those count like the occurred_at of a status event of that kind.
    started_at: str | None = None
    started_us: int | None = None
    answered_at: str | None = None
    answered_us: int | None = None
    costs: tuple[Cost, ...] = ()
    # Usage reported without a cost, priced by the worker at apply time; the event it
    # journals carries the resulting costs instead (and no usage lines).
    usage: tuple[UsageLine, ...] = Field(default=(), exclude_if=_is_empty)

    # Platform metadata (call.metadata); the platform's view of the numbers is taken as given.
    assistant_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    # The tenant (SPEC §10): a register like assistant_id; scoped API tokens see only theirs.
    organization_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    assistant_name: str | None = Field(default=None, max_length=MAX_TEXT)
    flow_name: str | None = Field(default=None, max_length=MAX_TEXT)
    to_phone_number: str | None = Field(default=None, max_length=MAX_TEXT)
    customer_phone_number: str | None = Field(default=None, max_length=MAX_TEXT)
    call_meta: dict[str, object] | None = None

    @property
    def key(self) -> str:
        """The event's identity in its call's journal: ids are namespaced by source (SPEC §8),
        so the same id string from two sources is two events."""
        return f"{self.source}:{self.event_id}"
