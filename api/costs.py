"""Detailed costs of one call (SPEC §9): the record's cost summary and one entry per charge
the ledger counted, built from the call's journal (the events it applied).

Each charge is converted to the ledger currency exactly as the worker converted it when it
applied the event (`ledger.rules.ledger_costs`), so per service type the entries add up to
the record's component, to the nano-unit. The rate-card estimate, when the record's
telephony cost is one, is an entry of its own marked `"estimated": true`.
"""

import math
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from api.auth import may_see
from api.calls import call_by_id, store_errors
from api.views import call_sid_and_scope
from ledger.errors import NotFound, Unapplicable
from ledger.events import CallEvent
from ledger.money import format_nano
from ledger.rules import CallState, estimate_of, ledger_costs, render_record
from ledger.settings import Settings
from ledger.store import Store
from ledger.web import SETTINGS, STORE


def _money(nano: int | None) -> orjson.Fragment | None:
    return None if nano is None else orjson.Fragment(format_nano(nano).encode())


def _decimal(text: str | None) -> orjson.Fragment | None:
    """Decimal text (a usage amount, a unit cost) as an exact JSON number."""
    return None if text is None else orjson.Fragment(format(Decimal(text), "f").encode())


def cost_entries(events: list[CallEvent], state: CallState, record: dict[str, Any],
                 settings: Settings) -> list[dict[str, Any]]:
    """One entry per counted charge, oldest first; then the estimate, if the record uses one."""
    entries = []
    for event in sorted(events, key=lambda e: (e.occurred_us, e.key)):
        try:
            converted: list[tuple[str, int | None]] = list(ledger_costs(event, settings))
        except Unapplicable:  # applied with an FX rate this process no longer has: shown unconverted
            converted = [(cost.component, None) for cost in event.costs]
        for n, (component, amount) in enumerate(converted):
            original = event.costs[n]
            metadata: dict[str, Any] = {"source": event.source, "event_id": event.event_id, "event_type": event.type}
            if original.currency != settings.currency:
                metadata["original_currency"] = original.currency
                metadata["original_amount"] = _money(original.amount_nano)
            if original.price_entry is not None:  # priced from usage (SPEC §11): the entry it was priced by
                metadata["price_entry"] = original.price_entry.model_dump()
            entries.append({
                "id": f"{event.key}#{n}", "service_type": component,
                "provider": original.provider or (None if event.source == "platform" else event.source),
                "model": original.model, "usage_type": original.usage_type,
                "usage_amount": _decimal(original.usage_amount), "unit_cost": _decimal(original.unit_cost),
                "total_cost": _money(amount), "timestamp": event.occurred_at, "metadata": metadata,
            })
    if "telephony" not in state.costs and record["telephony_cost"] is not None:
        estimate, rate = estimate_of(state, record["duration"], settings)  # as fixed when applied
        minutes = math.ceil(record["duration"] / 60)
        entries.append({
            "id": "estimate:telephony", "service_type": "telephony", "provider": state.provider,
            "model": None, "usage_type": "minutes", "usage_amount": minutes,
            "unit_cost": None if rate is None else orjson.Fragment(rate.encode()),
            "total_cost": _money(estimate), "timestamp": record["ended_at"], "metadata": {"estimated": True},
        })
    return entries


async def costs_body(store: Store, settings: Settings, sid: str, record_id: int, state: CallState) -> bytes:
    record = render_record(sid, record_id, state, settings)
    events = [CallEvent.model_validate_json(raw) for raw in await store.all_events(sid)]
    duration = record["duration"]
    summary = {
        "call_id": record_id, "call_sid": sid,
        **{name: _money(record[name]) for name in ("total_cost", "llm_cost", "tts_cost", "stt_cost",
                                                   "telephony_cost")},
        "currency": record["cost_currency"],
        "duration_minutes": None if duration is None else math.ceil(duration / 60),
        "started_at": record["started_at"], "ended_at": record["ended_at"],
    }
    return orjson.dumps({"call_summary": summary, "detailed_entries": cost_entries(events, state, record, settings)})


@store_errors
async def costs_by_sid(request: web.Request) -> web.Response:
    sid, scope = call_sid_and_scope(request)
    found = await request.app[STORE].get_call(sid)
    if found is None or not may_see(found[1], scope):
        raise NotFound("no call with this SID")
    body = await costs_body(request.app[STORE], request.app[SETTINGS], sid, found[0], found[1])
    return web.Response(body=body, content_type="application/json")


@store_errors
async def costs_by_id(request: web.Request) -> web.Response:
    sid, record_id, state = await call_by_id(request)
    body = await costs_body(request.app[STORE], request.app[SETTINGS], sid, record_id, state)
    return web.Response(body=body, content_type="application/json")

