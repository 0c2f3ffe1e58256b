"""Points in time as the sources give them, kept at the precision they were given.

An `Instant` pairs canonical UTC text (`2026-11-24T10:00:00.123Z`, with exactly the
fraction digits the source wrote, up to six) with integer microseconds since the
epoch, which is what the ledger compares.
"""

import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import NamedTuple

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2}|UTC|GMT)?$"
)


class Instant(NamedTuple):
    text: str
    us: int


_MICROSECOND = timedelta(microseconds=1)


def _instant(dt: datetime, digits: int) -> Instant:
    try:
        dt = dt.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 has no UTC equivalent
        raise ValueError("timestamp out of range") from None
    return utc_instant(dt, digits)


def utc_instant(dt: datetime, digits: int = 0) -> Instant:
    """The Instant of an aware datetime already in UTC (`_instant` without the conversion)."""
    us = (dt - _EPOCH) // _MICROSECOND
    # Not strftime("%Y"): it drops the leading zeros of years before 1000 ("1-01-01").
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if digits:
        text += "." + f"{dt.microsecond:06d}"[:digits]
    return Instant(text + "Z", us)


def parse_iso(value: str) -> Instant:
    """ISO 8601 / RFC 3339, or `YYYY-MM-DD HH:MM:SS`; no offset means UTC.

    Raises ValueError for anything else.
    """
    m = _ISO.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError("not an ISO 8601 timestamp")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    frac = frac or ""
    digits = min(len(frac), 6)
    micro = int((frac[:6]).ljust(6, "0")) if frac else 0
    tz = UTC
    if zone and zone.upper() not in ("Z", "UTC", "GMT"):
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
    except (ValueError, OverflowError):
        raise ValueError("not a valid date and time") from None
    return _instant(dt, digits)


def parse_rfc2822(value: str) -> Instant:
    """Twilio's `Tue, 14 Jan 2025 10:31:05 +0000` (day possibly unpadded)."""
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise ValueError("not an RFC 2822 timestamp") from None
    if dt is None:
        raise ValueError("not an RFC 2822 timestamp")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _instant(dt, 0)


def from_unix(seconds: float) -> Instant:
    """Unix seconds (a signed header timestamp) → Instant at whole-second precision
    unless the value has a fraction."""
    try:
        dt = datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError("unix time out of range") from None
    return _instant(dt, 6 if dt.microsecond else 0)


def format_us(us: int) -> str:
    """Microseconds since the epoch → canonical text (fraction only when non-zero)."""
    dt = _EPOCH + timedelta(microseconds=us)
    return _instant(dt, 6 if dt.microsecond else 0).text


@functools.lru_cache(maxsize=4096)
def _day_text(days: int) -> str:
    day = _EPOCH + timedelta(days=days)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}T"


def text_at(us: int, digits: int) -> str:
    """Microseconds since the epoch → canonical text with exactly `digits` fraction digits, as
    `_instant` writes it: the journal keeps an event's occurred_at as its precision only
    (call_ledger.core.journal), and writes and reads it per event, so no datetime is built for it."""
    days, micro = divmod(us, 86_400_000_000)
    seconds, micro = divmod(micro, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{_day_text(days)}{hour:02d}:{minute:02d}:{second:02d}"
    return (f"{text}.{micro:06d}"[:len(text) + 1 + digits] if digits else text) + "Z"
