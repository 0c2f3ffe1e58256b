"""The `data` of a platform `call.usage` (SPEC §6, §11): a reported cost, or usage for the
worker to price.

Three shapes:

- `cost` (+ `currency`): the charge counts as given; `provider`, `model`, `usage_type` and
  `usage_amount`, when present, are kept on the Cost as information (`/costs` shows them).
- `usage_type` + `usage_amount`, with `provider` (and usually `model`), no `cost`: one
  usage line, priced by the worker from LEDGER_PRICING_FILE when it applies the event.
- `usage: [{"usage_type", "usage_amount"}, ...]`: several lines at once (an LLM turn's
  input and output tokens), priced the same way.

Amounts are exact decimals, read from their text (JSON numbers arrive as Decimal), never
through a float. Pure: called by `PlatformSource.parse`.
"""

from decimal import Decimal, InvalidOperation
from typing import Any

from call_ledger.core.errors import InvalidEvent
from call_ledger.core.events import COMPONENTS, MAX_LABEL, Cost, UsageLine
from call_ledger.core.money import DECIMAL_TEXT, normalise_currency, parse_amount
from call_ledger.core.pricing import decimal_text

MAX_USAGE_LINES = 100
# Bounds on one usage amount: beyond any real count of tokens, characters or seconds, and
# small enough that amount x price stays exact and inside 64-bit sums.
MAX_USAGE_AMOUNT = Decimal(10**15)
MAX_USAGE_DECIMALS = 9
LINE_KEYS = frozenset({"usage_type", "usage_amount"})


def usage_amount(value: object, where: str) -> str:
    """A non-negative decimal (text or JSON number) -> its exact decimal text."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise InvalidEvent(f"{where} must be a decimal string or a number")
    try:
        if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
            raise ValueError("not decimal text")
        amount = Decimal(value)
    except (InvalidOperation, ValueError):
        raise InvalidEvent(f"{where} is not a decimal number") from None
    if not amount.is_finite():
        raise InvalidEvent(f"{where} is not a finite number")
    if amount < 0:
        raise InvalidEvent(f"{where} must be non-negative")
    if amount > MAX_USAGE_AMOUNT:
        raise InvalidEvent(f"{where} is implausibly large (above {MAX_USAGE_AMOUNT})")
    return decimal_text(_exact(amount, where))


def _exact(amount: Decimal, where: str) -> Decimal:
    """The amount without trailing zeros, refused with more than MAX_USAGE_DECIMALS decimals.

    Worked out on the digits themselves, never through a decimal context: `normalize()` rounds
    to 28 digits and turns 1e-999999999 into 0, which then passed this check and was written out
    as a billion-digit text (a signed 1 KB body held a worker for seconds and gigabytes)."""
    _, digits, exponent = amount.as_tuple()
    if not any(digits):
        return Decimal(0)
    assert isinstance(exponent, int)  # finite: checked by the caller
    end = len(digits)
    while digits[end - 1] == 0:  # trailing zeros only move the exponent
        end -= 1
        exponent += 1
    if -exponent > MAX_USAGE_DECIMALS:
        raise InvalidEvent(f"{where} has more than {MAX_USAGE_DECIMALS} decimals")
    return Decimal((0, digits[:end], exponent))


def _label(data: dict[str, Any], name: str, where: str = "data") -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL:
        raise InvalidEvent(f"{where}.{name} must be a non-empty string of at most {MAX_LABEL} characters")
    return value


def _lines(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(usage_type, usage_amount text) of either form; [] when the event reports none."""
    single = data.get("usage_type") is not None or data.get("usage_amount") is not None
    listed = data.get("usage")
    if single and listed is not None:
        raise InvalidEvent("data: give usage_type + usage_amount or a usage list, not both")
    if single:
        usage_type = _label(data, "usage_type")
        if usage_type is None or data.get("usage_amount") is None:
            raise InvalidEvent("data.usage_type and data.usage_amount go together")
        return [(usage_type, usage_amount(data["usage_amount"], "data.usage_amount"))]
    if listed is None:
        return []
    if not isinstance(listed, list) or not listed:
        raise InvalidEvent("data.usage must be a non-empty list of {usage_type, usage_amount}")
    if len(listed) > MAX_USAGE_LINES:
        raise InvalidEvent(f"data.usage has more than {MAX_USAGE_LINES} lines")
    lines = []
    for i, line in enumerate(listed):
        where = f"data.usage[{i}]"
        if not isinstance(line, dict) or set(line) != LINE_KEYS:
            raise InvalidEvent(f"{where} must be an object with exactly usage_type and usage_amount")
        usage_type = _label(line, "usage_type", where)
        if usage_type is None:
            raise InvalidEvent(f"{where}.usage_type must be a non-empty string")
        lines.append((usage_type, usage_amount(line["usage_amount"], f"{where}.usage_amount")))
    return lines


def parse_usage(data: dict[str, Any], default_currency: str) -> dict[str, Any]:
    """CallEvent fields (`costs`, `usage`) of a call.usage; InvalidEvent (422) naming what is wrong."""
    component = data.get("component")
    if component not in COMPONENTS:
        raise InvalidEvent(f"data.component must be one of {', '.join(COMPONENTS)}")
    provider, model = _label(data, "provider"), _label(data, "model")
    lines = _lines(data)
    try:
        currency = normalise_currency(data.get("currency") or default_currency)
    except ValueError as exc:
        raise InvalidEvent(f"data.currency: {exc}") from None
    cost = data.get("cost")
    if cost is None and lines:
        # Priced at apply time, in the currency of the price entry; `currency` is not used.
        if provider is None:
            raise InvalidEvent("data.provider is required to price usage (no data.cost given)")
        return {"usage": tuple(UsageLine(component=component, provider=provider, model=model, usage_type=kind,
                                         usage_amount=amount) for kind, amount in lines)}
    if isinstance(cost, bool) or not isinstance(cost, str | int | Decimal):
        raise InvalidEvent("data.cost must be a decimal string or a number "
                           "(or give usage_type + usage_amount, or usage, to have it priced)")
    try:
        amount_nano = parse_amount(cost)
    except ValueError as exc:
        raise InvalidEvent(f"data.cost: {exc}") from None
    # A reported cost counts; usage beside it is information (SPEC §11).
    single = lines[0] if len(lines) == 1 and data.get("usage") is None else (None, None)
    fields: dict[str, Any] = {"costs": (Cost(component=component, amount_nano=amount_nano, currency=currency,
                                             provider=provider, model=model, usage_type=single[0],
                                             usage_amount=single[1]),)}
    if data.get("usage") is not None:  # several lines beside a cost: kept on the event, not priced
        fields["usage"] = tuple(UsageLine(component=component, provider=provider, model=model, usage_type=kind,
                                          usage_amount=amount) for kind, amount in lines)
    return fields
