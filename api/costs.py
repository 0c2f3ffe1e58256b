"""Detailed costs of one call (SPEC §9, §14): the record's cost summary and one entry per charge
the ledger counted, built from the call's journal (the events it applied), a page at a time.

A page reads at most `limit` journal events after the cursor `after` (the `next` of the page
before), as /events does, whatever the call's length: the entries are the charges among those
events, so a page may hold fewer entries than `limit`, or none, and still have a `next`. The
summary is the record's (its stored state, every event counted), the same on every page; the
rate-card estimate, when the record's telephony cost is one, is an entry of its own, marked
`"estimated": true`, on the last page.

Nothing is converted at read: a charge in another currency shows the amount and the FX rate the
worker counted it at, frozen in the journaled event (worker/apply.py `frozen_fx`), so per
service type the entries of all pages add up to the record's component, to the nano-unit,
whatever LEDGER_FX_RATES says now. Events journaled before rates were frozen are converted
with this process's rate, as they always were (null when it has none).
"""

import math
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from call_ledger.api.calls import call_by_id, store_errors
from call_ledger.api.views import (
    EVENTS_LIMIT_DEFAULT,
    EVENTS_LIMIT_MAX,
    call_sid_and_scope,
    decode_cursor,
    encode_cursor,
    page_limit,
)
from call_ledger.api.visible import visible_call
from call_ledger.core.errors import NotFound
from call_ledger.core.events import CallEvent, Cost
from call_ledger.core.money import convert, format_nano
from call_ledger.core.rules import CallState, estimate_of
from call_ledger.core.served import StoredCall
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.base import SETTINGS, STORE


def _money(nano: int | None) -> orjson.Fragment | None:
    return None if nano is None else orjson.Fragment(format_nano(nano).encode())


def _decimal(text: str | None) -> orjson.Fragment | None:
    """Decimal text (a usage amount, a unit cost, a rate) as an exact JSON number."""
    return None if text is None else orjson.Fragment(format(Decimal(text), "f").encode())


def counted(cost: Cost, settings: Settings) -> tuple[int | None, str | None]:
    """(the amount counted in the ledger currency, the FX rate's text) of one charge: as frozen
    when applied; for an entry journaled before rates were frozen, converted with this process's
    rate (None, None without one)."""
    if cost.currency == settings.currency:
        return cost.amount_nano, None
    if cost.ledger_amount_nano is not None:
        return cost.ledger_amount_nano, cost.fx_rate
    rate = settings.fx_rates.get(cost.currency)
    return (None, None) if rate is None else (convert(cost.amount_nano, rate), None)


def cost_entries(events: list[CallEvent], settings: Settings) -> list[dict[str, Any]]:
    """One entry per charge of these events, in their order (the journal's: oldest first)."""
    entries = []
    for event in events:
        for n, cost in enumerate(event.costs):
            amount, rate = counted(cost, settings)
            metadata: dict[str, Any] = {"source": event.source, "event_id": event.event_id, "event_type": event.type}
            if cost.currency != settings.currency:
                metadata["original_currency"] = cost.currency
                metadata["original_amount"] = _money(cost.amount_nano)
                if rate is not None:
                    metadata["fx_rate"] = _decimal(rate)
            if cost.price_entry is not None:  # priced from usage (SPEC §11): the entry it was priced by
                metadata["price_entry"] = cost.price_entry.model_dump()
            entries.append({
                "id": f"{event.key}#{n}", "service_type": cost.component,
                "provider": cost.provider or (None if event.source == "platform" else event.source),
                "model": cost.model, "usage_type": cost.usage_type,
                "usage_amount": _decimal(cost.usage_amount), "unit_cost": _decimal(cost.unit_cost),
                "total_cost": _money(amount), "timestamp": event.occurred_at, "metadata": metadata,
            })
    return entries


def estimate_entry(state: CallState, record: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """The rate-card estimate as an entry, if the record's telephony cost is one."""
    if "telephony" in state.costs or record["telephony_cost"] is None:
        return None
    estimate, rate = estimate_of(state, record["duration"], settings.policy)  # as fixed when applied
    return {
        "id": "estimate:telephony", "service_type": "telephony", "provider": state.provider,
        "model": None, "usage_type": "minutes", "usage_amount": math.ceil(record["duration"] / 60),
        "unit_cost": None if rate is None else orjson.Fragment(rate.encode()),
        "total_cost": _money(estimate), "timestamp": record["ended_at"], "metadata": {"estimated": True},
    }


async def costs_body(store: Store, settings: Settings, call: StoredCall, after: str = "",
                     limit: int = EVENTS_LIMIT_DEFAULT) -> bytes:
    """One page: the summary, the charges of at most `limit` journal events after the order
    member `after` ('' = the start), the estimate on the last page, and `next`."""
    sid, record_id, state = call.call_sid, call.record_id, call.state()
    record = call.record(settings.policy, state)
    events: list[CallEvent] = []
    next_member = None
    if settings.journal == "on":  # off: no copy of any event, so no per-event entry (README)
        page = await store.events_page(sid, after, limit)  # UnknownCursor (422) for a stranger's key
        if page is not None:
            events = [CallEvent.model_validate_json(raw) for raw in page[0]]
            next_member = page[1]
    entries = cost_entries(events, settings)
    estimate = None if next_member else estimate_entry(state, record, settings)
    if estimate is not None:
        entries.append(estimate)
    duration = record["duration"]
    summary = {
        "call_id": record_id, "call_sid": sid,
        **{name: _money(record[name]) for name in ("total_cost", "llm_cost", "tts_cost", "stt_cost",
                                                   "telephony_cost")},
        "currency": record["cost_currency"],
        "duration_minutes": None if duration is None else math.ceil(duration / 60),
        "started_at": record["started_at"], "ended_at": record["ended_at"],
    }
    return orjson.dumps({"call_summary": summary, "detailed_entries": entries,
                         "next": encode_cursor(next_member) if next_member else None})


def page_query(request: web.Request) -> tuple[str, int]:
    """(`after` as an order member, '' for none; `limit`): checked before any read, 422 if bad."""
    limit = page_limit(request, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX)
    after = request.query.get("after")
    return (decode_cursor(after) if after else ""), limit


@store_errors
async def costs_by_sid(request: web.Request) -> web.Response:
    sid, scope = call_sid_and_scope(request)
    after, limit = page_query(request)
    call = await visible_call(request.app[STORE], sid, scope)
    if call is None:
        raise NotFound("no call with this SID")
    body = await costs_body(request.app[STORE], request.app[SETTINGS], call, after, limit)
    return web.Response(body=body, content_type="application/json")


@store_errors
async def costs_by_id(request: web.Request) -> web.Response:
    call = await call_by_id(request)
    after, limit = page_query(request)
    body = await costs_body(request.app[STORE], request.app[SETTINGS], call, after, limit)
    return web.Response(body=body, content_type="application/json")

