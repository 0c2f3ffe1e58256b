"""The normalised call event: what every source's payload becomes at intake.

Intake turns a provider's or the platform's webhook into one `CallEvent`, writes it
to the stream as JSON, and the worker applies it to the call's state. The event
carries facts in the source's terms (its raw from/to and direction, amounts in the
currency it was charged in); the ledger's rules (`ledger.rules`) decide what they
mean for the record.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["initiated", "ringing", "ongoing", "completed", "busy", "no-answer", "canceled", "failed"]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})
Direction = Literal["inbound", "outbound"]
Component = Literal["llm", "tts", "stt", "telephony"]
MAX_CALL_SID = 512
# Bound on the text registers (names, numbers): a record stays small whatever is posted.
MAX_TEXT = 1024
MAX_SECONDS = 10**9  # far beyond any call; keeps every stored integer inside 64 bits
COMPONENTS: tuple[str, ...] = Component.__args__  # type: ignore[attr-defined]


class Cost(BaseModel):
    """One charge, in the currency it was given in (converted when applied)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: Component
    amount_nano: int = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class CallEvent(BaseModel):
    """One thing a source said about one call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    # Bounded so that every id intake accepts can also be looked up (the read API takes up to 512).
    event_id: str = Field(min_length=1, max_length=1024)
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
