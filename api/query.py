"""Query parameters of the calls API, parsed and checked (SPEC §9): pure functions over the
query mapping, each bad value an InvalidQuery (422) that names the parameter."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from call_ledger.core.errors import InvalidQuery
from call_ledger.core.events import STATUSES
from call_ledger.core.indexes import EntryPayload, ListCursor, decode_cursor
from call_ledger.core.instants import parse_iso

LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 100, 1000
SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX = 50, 200
SEARCH_MIN_CHARS = 3
MAX_FILTER_TEXT = 1024
PERIODS = {"1d": 1, "7d": 7, "30d": 30, "90d": 90}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY_US = 86_400_000_000
# A query string's "+" is a space once decoded: "...T10:00:00 00:00" was "+00:00" sent unescaped.
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")
_INT = re.compile(r"^[0-9]{1,19}$")


def check_single_valued(names: Iterable[str]) -> None:
    """Every parameter of the read API takes one value: a name given twice (`?status=completed&status=busy`)
    is refused, naming it, rather than one of its values taken silently (a proxy or cache in front may
    take the other)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidQuery(f"{name[:64]} is given more than once: every parameter takes one value")
        seen.add(name)


@dataclass(frozen=True)
class CallFilter:
    """The list's filters. The indexed ones (status, assistant, dates) pick one sorted set
    and a score range; the others are checked on each candidate."""

    status: str | None = None
    assistant_id: int | None = None
    date_from_us: int | None = None
    date_to_us: int | None = None
    customer_phone: str | None = None  # lower-cased substrings
    call_sid: str | None = None
    assistant_name: str | None = None
    min_duration: int | None = None
    max_duration: int | None = None

    def scanned(self) -> list[str]:
        """The parameters that are not indexed and are set (checked on each candidate)."""
        return [name for name in ("customer_phone", "call_sid", "assistant_name", "min_duration", "max_duration")
                if getattr(self, name) is not None]

    def matches(self, payload: EntryPayload) -> bool:
        """Whether an index entry's payload passes the non-indexed filters."""
        for wanted, value in ((self.customer_phone, payload.customer_phone_number), (self.call_sid, payload.call_sid),
                              (self.assistant_name, payload.assistant_name)):
            if wanted is not None and (not isinstance(value, str) or wanted not in value.lower()):
                return False
        duration = payload.duration
        if self.min_duration is not None or self.max_duration is not None:
            if not isinstance(duration, int):  # SPEC §9: no duration matches neither bound
                return False
            if self.min_duration is not None and duration < self.min_duration:
                return False
            if self.max_duration is not None and duration > self.max_duration:
                return False
        return True


@dataclass(frozen=True)
class ListQuery:
    filter: CallFilter
    skip: int
    limit: int
    cursor: ListCursor | None


def _integer(query: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    raw = raw.strip()
    if not _INT.match(raw) or not lo <= int(raw) <= hi:
        raise InvalidQuery(f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


def _instant(query: Mapping[str, str], name: str, end_of_day: bool) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    raw = _SPACED_OFFSET.sub(r"+\1", raw.strip())
    try:
        if _DATE_ONLY.match(raw):
            us = parse_iso(raw + "T00:00:00Z").us
            return us + _DAY_US - 1 if end_of_day else us
        return parse_iso(raw).us
    except ValueError:
        raise InvalidQuery(f"{name} must be an ISO 8601 date or date-time") from None


def _substring(query: Mapping[str, str], name: str) -> str | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_FILTER_TEXT:
        raise InvalidQuery(f"{name} must be at most {MAX_FILTER_TEXT} characters")
    return raw.lower()


def parse_filter(query: Mapping[str, str]) -> CallFilter:
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(STATUSES)}")
    date_from = _instant(query, "date_from", end_of_day=False)
    date_to = _instant(query, "date_to", end_of_day=True)
    min_duration = _integer(query, "min_duration", None, 0, 10**9)
    max_duration = _integer(query, "max_duration", None, 0, 10**9)
    return CallFilter(
        status=status,
        assistant_id=_integer(query, "assistant_id", None, 0, 2**63 - 1),
        date_from_us=date_from, date_to_us=date_to,
        customer_phone=_substring(query, "customer_phone"),
        call_sid=_substring(query, "call_sid"),
        assistant_name=_substring(query, "assistant_name"),
        min_duration=min_duration, max_duration=max_duration,
    )


def parse_list(query: Mapping[str, str]) -> ListQuery:
    """GET /api/v1/calls: filters, skip, limit, cursor."""
    filters = parse_filter(query)
    skip = _integer(query, "skip", 0, 0, 10**9)
    limit = _integer(query, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
    assert skip is not None and limit is not None
    cursor = None
    raw = query.get("cursor")
    if raw:
        if skip:
            raise InvalidQuery("skip cannot be combined with cursor (the cursor says where to continue)")
        try:
            cursor = decode_cursor(raw)
        except ValueError:
            raise InvalidQuery("cursor is not a cursor this service gave out") from None
    return ListQuery(filters, skip, limit, cursor)


class SearchQuery(NamedTuple):
    q: str  # lower-cased
    limit: int


def parse_search(query: Mapping[str, str]) -> SearchQuery:
    """GET /api/v1/calls/search: its q and limit."""
    q = query.get("q", "")
    if len(q.strip()) < SEARCH_MIN_CHARS:
        raise InvalidQuery(f"q must be at least {SEARCH_MIN_CHARS} characters")
    if len(q) > MAX_FILTER_TEXT:
        raise InvalidQuery(f"q must be at most {MAX_FILTER_TEXT} characters")
    limit = _integer(query, "limit", SEARCH_LIMIT_DEFAULT, 1, SEARCH_LIMIT_MAX)
    assert limit is not None
    return SearchQuery(q.strip().lower(), limit)


class Period(NamedTuple):
    name: str  # one of PERIODS
    days: int


def parse_period(query: Mapping[str, str]) -> Period:
    period = query.get("period") or "7d"
    if period not in PERIODS:
        raise InvalidQuery(f"period must be one of {', '.join(PERIODS)}")
    return Period(period, PERIODS[period])


def parse_format(query: Mapping[str, str]) -> str:
    fmt = query.get("format") or "csv"
    if fmt not in ("csv", "json"):
        raise InvalidQuery("format must be csv or json")
    return fmt
