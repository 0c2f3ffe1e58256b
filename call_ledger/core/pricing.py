"""Usage pricing (SPEC §11): the price table, reading and validating a pricing file, lookup,
and pricing an event's usage lines into costs.

Pure domain logic: no I/O. The file itself is read by `call_ledger.settings.load_pricing_file`, once at
start-up (Settings) or for `call-ledger pricing check`, and handed here as text.

Money stays exact: prices are `Decimal` read from the file's text (YAML and JSON numbers
never pass through a float), and a line's amount is the exact rational
`usage_amount x unit_price / unit_quantity`, rounded once, half-even, to nano-units of
the entry's currency. Conversion to the ledger currency happens where every other cost
is converted (`call_ledger.core.rules.ledger_costs`).
"""

import bisect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation
from fractions import Fraction
from typing import Any, NamedTuple

import yaml

from call_ledger.core.errors import Refused, Unapplicable
from call_ledger.core.events import COMPONENTS, MAX_LABEL, CallEvent, Cost, PriceRef, UsageLine
from call_ledger.core.instants import parse_iso
from call_ledger.core.money import MAX_AMOUNT_NANO, NANO, normalise_currency

ANY_MODEL = "*"
ALWAYS_US = -(2**63)  # an entry without effective_from is in effect before any event
ENTRY_KEYS = ("component", "provider", "model", "usage_type", "unit_price", "currency", "unit_quantity",
              "effective_from")
REQUIRED_KEYS = ("component", "provider", "usage_type", "unit_price")
# Bounds that keep every priced amount and sum far inside 64-bit integers, and refuse
# typos ("1e30") as errors rather than pricing with them.
MAX_UNIT_PRICE = Decimal(10**9)
MAX_UNIT_QUANTITY = Decimal(10**12)
MAX_NUMBER_TEXT = 40  # digits of one price or quantity: far beyond any real one
# Telephony entries priced by the rate-card estimate: per billed minute of each direction.
TELEPHONY_USAGE_TYPES = {"inbound": "inbound_minutes", "outbound": "outbound_minutes"}

# Exact multiplication: operands are bounded (MAX_NUMBER_TEXT, usage amounts at intake), so
# 120 digits never round; Inexact is trapped anyway so that a surprise falls back to
# Fraction instead of rounding twice.
_EXACT = Context(prec=120, rounding=ROUND_HALF_EVEN, traps=[Inexact, InvalidOperation])

_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

Key = tuple[str, str, str, str]  # (component, provider, usage_type, model)


class PricingError(ValueError):
    """An invalid pricing file: every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def decimal_text(value: Decimal) -> str:
    """Exact fixed-point text without exponent or trailing zeros: 1.50E+3 -> "1500"."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True)
class PriceEntry:
    """One validated line of the pricing file."""

    index: int  # position in the file's `prices` list, for messages
    component: str
    provider: str
    model: str
    usage_type: str
    unit_price: Decimal
    currency: str
    unit_quantity: Decimal
    effective_from: str | None  # canonical UTC text, None: always
    effective_us: int
    # unit_price x NANO / unit_quantity: nano-units per unit, exact.
    nano_per_unit: Fraction = field(init=False, repr=False, compare=False)
    # The same as a Decimal when it terminates (the usual case: unit_quantity 1, 1000,
    # 10^6): pricing then stays in C Decimal arithmetic. None: Fraction is needed.
    nano_per_unit_decimal: Decimal | None = field(init=False, repr=False, compare=False)
    ref: PriceRef = field(init=False, repr=False, compare=False)
    # unit_price / unit_quantity as decimal text: exact when it terminates, else to 28
    # significant digits (only shown: the amount itself is always computed exactly).
    unit_cost: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = Fraction(self.unit_price) * NANO / Fraction(self.unit_quantity)
        object.__setattr__(self, "nano_per_unit", exact)
        object.__setattr__(self, "nano_per_unit_decimal", _terminating(exact))
        object.__setattr__(self, "ref", PriceRef(
            component=self.component, provider=self.provider, model=self.model,  # type: ignore[arg-type]
            usage_type=self.usage_type, effective_from=self.effective_from,
            unit_price=decimal_text(self.unit_price), unit_quantity=decimal_text(self.unit_quantity),
            currency=self.currency))
        per_unit = _terminating(Fraction(self.unit_price) / Fraction(self.unit_quantity))
        if per_unit is None:
            per_unit = Context(prec=28).divide(self.unit_price, self.unit_quantity)
        object.__setattr__(self, "unit_cost", decimal_text(per_unit))

    @property
    def key(self) -> Key:
        return (self.component, self.provider, self.usage_type, self.model)

    @property
    def label(self) -> str:
        return f"{self.component}/{self.provider}/{self.model}/{self.usage_type}"

    def price_nano(self, usage_amount: Decimal) -> int:
        """usage_amount x unit_price / unit_quantity in nano-units of `currency`, half-even."""
        if self.nano_per_unit_decimal is not None:
            try:
                product = _EXACT.multiply(usage_amount, self.nano_per_unit_decimal)
                return int(_EXACT.quantize(product, Decimal(1)))
            except (Inexact, InvalidOperation):
                pass
        return round(Fraction(usage_amount) * self.nano_per_unit)  # Fraction rounds half to even, exactly


def _terminating(value: Fraction) -> Decimal | None:
    """The Fraction as an exact Decimal, or None when its decimal expansion does not end."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return None
    try:
        return _EXACT.divide(Decimal(value.numerator), Decimal(value.denominator))
    except (Inexact, InvalidOperation):
        return None


class PriceTable:
    """The validated entries, indexed for lookup by (component, provider, usage type, model)
    and effective time. Immutable once built."""

    def __init__(self, entries: Iterable[PriceEntry] = (), source: str | None = None) -> None:
        self.entries: tuple[PriceEntry, ...] = tuple(entries)
        self.source = source
        grouped: dict[Key, list[PriceEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.key, []).append(entry)
        # Per key: effective instants ascending (for bisect) and the entries in that order.
        self._index: dict[Key, tuple[list[int], list[PriceEntry]]] = {}
        for key, group in grouped.items():
            group.sort(key=lambda e: e.effective_us)
            self._index[key] = ([e.effective_us for e in group], group)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"PriceTable({len(self.entries)} entries from {self.source or 'memory'})"

    def currencies(self) -> set[str]:
        return {entry.currency for entry in self.entries}

    def _in_effect(self, key: Key, at_us: int) -> PriceEntry | None:
        found = self._index.get(key)
        if found is None:
            return None
        instants, group = found
        position = bisect.bisect_right(instants, at_us)  # the latest effective_from not after at_us
        return group[position - 1] if position else None

    def lookup(self, component: str, provider: str, model: str | None, usage_type: str,
               at_us: int) -> PriceEntry | None:
        """The entry that prices this usage at `at_us` (SPEC §11): among the exact model's
        entries if one of them is in effect then, else among the provider's `*` entries."""
        if model is not None and model != ANY_MODEL:
            exact = self._in_effect((component, provider, usage_type, model), at_us)
            if exact is not None:
                return exact
        return self._in_effect((component, provider, usage_type, ANY_MODEL), at_us)


EMPTY_TABLE = PriceTable()


# -- pricing events ------------------------------------------------------------------------------


def price_line(line: UsageLine, table: PriceTable, occurred_us: int, occurred_at: str) -> Cost:
    """One usage line as a Cost in its entry's currency, with the detail /costs shows."""
    # Intake refuses a usage-only line without a provider; None cannot match any entry.
    entry = (table.lookup(line.component, line.provider, line.model, line.usage_type, occurred_us)
             if line.provider is not None else None)
    if entry is None:
        where = "in LEDGER_PRICING_FILE" if len(table) else "(LEDGER_PRICING_FILE is not set)"
        raise Unapplicable(f"no price for {line.component}/{line.provider}/{line.model or ANY_MODEL}/"
                           f"{line.usage_type} at {occurred_at} {where}")
    amount = entry.price_nano(Decimal(line.usage_amount))
    if amount > MAX_AMOUNT_NANO:
        # No redelivery changes it (the bound is fixed, the price frozen at occurred_at): refused, not retried.
        raise Refused(f"{line.component}/{line.provider}/{line.usage_type}: {line.usage_amount} units priced "
                           f"by {entry.label} is above {MAX_AMOUNT_NANO // NANO} {entry.currency}")
    return Cost(component=line.component, amount_nano=amount, currency=entry.currency,
                provider=line.provider, model=line.model, usage_type=line.usage_type,
                usage_amount=line.usage_amount, unit_cost=entry.unit_cost, price_entry=entry.ref)


def price_event(event: CallEvent, table: PriceTable) -> CallEvent:
    """The event with its usage lines turned into costs (the worker applies and journals
    this one, so the price is frozen with the event).

    An event that reports a cost, or no usage, is returned as it is: a reported cost is
    what counts (SPEC §11), usage beside it is information. Raises Unapplicable naming
    every usage line that has no price at the event's occurred_at (Refused when a line is
    priced above the bound on an amount: no retry can change that).
    """
    if event.costs or not event.usage:
        return event
    costs: list[Cost] = []
    missing: list[str] = []
    refused = False
    for line in event.usage:
        try:
            costs.append(price_line(line, table, event.occurred_us, event.occurred_at))
        except Unapplicable as exc:
            missing.append(str(exc))
            refused = refused or isinstance(exc, Refused)
    if missing:
        raise (Refused if refused else Unapplicable)("; ".join(missing))
    return event.model_copy(update={"costs": tuple(costs), "usage": ()})


class TelephonyCharge(NamedTuple):
    """A rate-card estimate priced by the file: the amount, in the entry's currency."""

    amount_nano: int
    currency: str
    unit_cost: str  # the entry's unit cost, as decimal text


def telephony_charge(table: PriceTable, provider: str | None, direction: str, minutes: int,
                     at_us: int) -> TelephonyCharge | None:
    """The rate-card estimate from the file: `minutes` of `{direction}_minutes` of the
    call's provider, priced by the `*`-model telephony entry in effect at `at_us` (the
    call's start, so an entry added later for the future reprices no past call).
    None when the file has no such entry."""
    if provider is None:
        return None
    entry = table.lookup("telephony", provider, None, TELEPHONY_USAGE_TYPES[direction], at_us)
    if entry is None:
        return None
    return TelephonyCharge(entry.price_nano(Decimal(minutes)), entry.currency, entry.unit_cost)


# -- reading and validating a file --------------------------------------------------------------


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that keeps money exact and times as written.

    YAML floats become Decimal from their text (`unit_price: 0.15` is 0.15, not the
    binary float nearest to it); timestamps stay text for `parse_iso`, which keeps their
    precision; a key given twice in one mapping is an error, not the last one silently.
    """


def _yaml_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = str(loader.construct_scalar(node))
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:  # .inf, .nan: left as text for the validator to name
        return text


def _yaml_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    return str(loader.construct_scalar(node))


def _yaml_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor("tag:yaml.org,2002:float", _yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _yaml_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _yaml_mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"key {key!r} is given twice in one object")
        mapping[key] = value
    return mapping


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_text(text: str, name: str = "") -> Any:
    """The document in a pricing file: JSON for `.json` (or text starting with `{`),
    YAML otherwise. PricingError when it does not parse."""
    as_json = name.lower().endswith(".json") or (
        not name.lower().endswith((".yaml", ".yml")) and text.lstrip().startswith("{"))
    try:
        if as_json:
            return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant,
                              object_pairs_hook=_json_pairs)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except (ValueError, RecursionError) as exc:
        raise PricingError([f"not valid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise PricingError([f"not valid YAML: {' '.join(str(exc).split())}"]) from None


def _shown(value: object) -> str:
    """A value as the file wrote it: numbers bare, text quoted."""
    return str(value) if isinstance(value, int | Decimal) and not isinstance(value, bool) else repr(value)


def _number(value: object) -> Decimal:
    """Decimal text, an integer or a Decimal (never a float) -> a finite Decimal."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"must be a decimal number, got {_shown(value)}")
    text = str(value).strip()
    if len(text) > MAX_NUMBER_TEXT:
        raise ValueError(f"has more than {MAX_NUMBER_TEXT} characters")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite decimal number: {value!r}")
    return number


def _label(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be non-empty text, got {value!r}")
    if value != value.strip() or len(value) > MAX_LABEL:
        raise ValueError(f"must have no surrounding spaces and at most {MAX_LABEL} characters")
    return value


def _entry_name(raw: Mapping[str, Any]) -> str:
    parts = [raw.get(k) for k in ("component", "provider", "model", "usage_type")]
    if parts[2] is None:
        parts[2] = ANY_MODEL
    return "/".join(str(p) if p is not None else "?" for p in parts)


_Check = Callable[[Mapping[str, Any], str, Set[str]], dict[str, Any]]


def _required(raw: Mapping[str, Any], key: str) -> Any:
    value = raw.get(key)
    if value is None:
        raise ValueError("is required")
    return value


def _check_component(raw: Mapping[str, Any], _currency: str, _fx: Set[str]) -> dict[str, Any]:
    component = _required(raw, "component")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {_shown(component)} (one of {', '.join(COMPONENTS)})")
    return {"component": component}


def _check_text(key: str, default: str | None = None) -> _Check:
    def check(raw: Mapping[str, Any], _currency: str, _fx: Set[str]) -> dict[str, Any]:
        return {key: _label(raw.get(key, default) if default is not None else _required(raw, key))}
    return check


def _check_unit_price(raw: Mapping[str, Any], _currency: str, _fx: Set[str]) -> dict[str, Any]:
    value = _required(raw, "unit_price")
    price = _number(value)
    if price < 0:
        raise ValueError(f"negative price {price} (a price is never negative)")
    if price > MAX_UNIT_PRICE:
        raise ValueError(f"{_shown(value)} is above {MAX_UNIT_PRICE} per unit_quantity")
    return {"unit_price": price}


def _check_unit_quantity(raw: Mapping[str, Any], _currency: str, _fx: Set[str]) -> dict[str, Any]:
    value = raw.get("unit_quantity", 1)
    quantity = _number(value)
    if not 0 < quantity <= MAX_UNIT_QUANTITY:
        raise ValueError(f"must be a positive number up to {MAX_UNIT_QUANTITY}, got {_shown(value)}")
    return {"unit_quantity": quantity}


def _check_currency(raw: Mapping[str, Any], ledger_currency: str, fx_currencies: Set[str]) -> dict[str, Any]:
    value = raw.get("currency")
    if value is None:
        return {"currency": ledger_currency}
    code = normalise_currency(value)
    if code != ledger_currency and code not in fx_currencies:
        raise ValueError(f"{code} has no LEDGER_FX_RATES entry to convert it to the ledger currency "
                         f"{ledger_currency}")
    return {"currency": code}


def _check_effective_from(raw: Mapping[str, Any], _currency: str, _fx: Set[str]) -> dict[str, Any]:
    value = raw.get("effective_from")
    if value is None:
        return {"effective_from": None, "effective_us": ALWAYS_US}
    try:
        if not isinstance(value, str):
            raise ValueError
        text = value.strip()
        # A date alone is that day's 00:00 UTC.
        instant = parse_iso(f"{text}T00:00:00Z" if _DATE.match(text) else text)
    except ValueError:
        raise ValueError(f"must be an ISO 8601 time such as 2026-01-01T00:00:00Z, got {_shown(value)}") from None
    return {"effective_from": instant.text, "effective_us": instant.us}


_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("component", _check_component),
    ("provider", _check_text("provider")),
    ("model", _check_text("model", ANY_MODEL)),
    ("usage_type", _check_text("usage_type")),
    ("unit_price", _check_unit_price),
    ("currency", _check_currency),
    ("unit_quantity", _check_unit_quantity),
    ("effective_from", _check_effective_from),
)


def _check_entry(index: int, raw: object, ledger_currency: str, fx_currencies: Set[str],
                 problems: list[str]) -> PriceEntry | None:
    """One entry, or None after adding one line per problem (naming index and key) to `problems`."""
    where = f"prices[{index}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping of {', '.join(REQUIRED_KEYS)}, ...")
        return None
    name = _entry_name(raw)
    found: list[str] = [f"{where}.{key} ({name}): unknown key (known: {', '.join(ENTRY_KEYS)})"
                        for key in raw if key not in ENTRY_KEYS]
    values: dict[str, Any] = {}
    for key, check in _CHECKS:
        try:
            values.update(check(raw, ledger_currency, fx_currencies))
        except ValueError as exc:
            found.append(f"{where}.{key} ({name}): {exc}")
    problems.extend(found)
    return None if found else PriceEntry(index=index, **values)


def parse_document(doc: object, ledger_currency: str, fx_currencies: Set[str],
                   source: str | None = None) -> PriceTable:
    """Validate a parsed pricing document; PricingError listing every problem."""
    if not isinstance(doc, Mapping):
        raise PricingError(["the file must be a mapping with a `prices` list"])
    problems: list[str] = [f"unknown top-level key {key!r} (the file holds `prices`)"
                           for key in doc if key != "prices"]
    prices = doc.get("prices")
    if not isinstance(prices, list):
        raise PricingError([*problems, "`prices` must be a list of entries"])
    entries: list[PriceEntry] = []
    first: dict[tuple[Key, int], int] = {}
    for index, raw in enumerate(prices):
        entry = _check_entry(index, raw, ledger_currency, fx_currencies, problems)
        if entry is None:
            continue
        identity = (entry.key, entry.effective_us)
        if identity in first:
            problems.append(f"prices[{index}] ({entry.label}): duplicate of prices[{first[identity]}] "
                            f"(same component, provider, model, usage_type and effective_from)")
            continue
        first[identity] = index
        entries.append(entry)
    if problems:
        raise PricingError(problems)
    return PriceTable(entries, source)


def check_currencies(table: PriceTable, ledger_currency: str, fx_currencies: Set[str]) -> None:
    """A table built elsewhere must still be convertible into the ledger currency."""
    problems = [f"prices[{e.index}].currency ({e.label}): {e.currency} has no LEDGER_FX_RATES entry to convert "
                f"it to the ledger currency {ledger_currency}"
                for e in table.entries if e.currency != ledger_currency and e.currency not in fx_currencies]
    if problems:
        raise PricingError(problems)


def format_table(table: PriceTable) -> str:
    """The table as aligned columns, in lookup order (key, then effective_from)."""
    header = ("component", "provider", "model", "usage_type", "unit_price", "currency", "unit_quantity",
              "effective_from", "unit_cost")
    rows = [header] + [
        (e.component, e.provider, e.model, e.usage_type, decimal_text(e.unit_price), e.currency,
         decimal_text(e.unit_quantity), e.effective_from or "always", e.unit_cost)
        for e in sorted(table.entries, key=lambda e: (e.component, e.provider, e.model, e.usage_type,
                                                     e.effective_us))
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
