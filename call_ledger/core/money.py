"""Exact money: integer nano-units (10^-9 of a currency), never floats.

Amounts arrive as decimal strings or JSON numbers (parsed as Decimal, never float),
are stored and summed as Python ints, and leave as decimal text.
"""

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

NANO = 10**9
# Bound on a single amount: keeps every sum far inside a signed 64-bit integer and
# rejects nonsense ("1e300") as malformed rather than storing it.
MAX_AMOUNT_NANO = 10**9 * NANO
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Decimal text as providers write it: ASCII digits, one optional sign, point and exponent.
# Python's Decimal() also takes "1_0", other scripts' digits and surrounding whitespace; an
# amount in such a form is malformed, not read as some other number.
DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_amount(value: object) -> int:
    """Decimal text / Decimal / int → non-negative nano-units.

    Providers write charges with a sign of their own (Twilio's price is "-0.01300"):
    a cost is its absolute value. More than nine decimals round half-even.
    Raises ValueError for anything that is not a finite decimal number.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError("amount must be a decimal number")
    if isinstance(value, float):
        # Never through a float: callers parse JSON with parse_float=Decimal.
        raise ValueError("amount must not be a binary float")
    if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
        raise ValueError("amount is not a decimal number")
    try:
        amount = Decimal(value)  # type: ignore[arg-type]
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError("amount is not a decimal number") from None
    if not amount.is_finite():
        raise ValueError("amount is not a finite number")
    try:  # "1e999999999" overflows the decimal context in abs() / quantize(): malformed, not a crash
        if abs(amount) > MAX_AMOUNT_NANO // NANO:
            raise ValueError("amount is implausibly large")
        return int((abs(amount) * NANO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except ArithmeticError:
        raise ValueError("amount is out of range") from None


def parse_rate(value: str) -> Decimal:
    """A positive decimal rate (FX multiplier or price per minute)."""
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"{value!r} is not a non-negative decimal number")
    return rate


def normalise_currency(code: object) -> str:
    """ISO 4217 code, upper-cased; ValueError if it is not three letters."""
    if not isinstance(code, str) or not _CURRENCY.match(code.strip().upper()):
        raise ValueError("currency must be a three-letter ISO 4217 code")
    return code.strip().upper()


def convert(nano: int, rate: Decimal) -> int:
    """Multiply by an FX rate and round half-even back to nano-units."""
    return int((Decimal(nano) * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def format_nano(nano: int) -> str:
    """Nano-units → the shortest exact decimal text: 300000000 → "0.3", 2*NANO → "2"."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")
