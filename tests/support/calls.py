"""The calls API's test data: tokens of three scopes, a call's events as intake writes them, and
loading events through a burst-mode worker (so the indexes are what the worker derives)."""

from typing import Any

from call_ledger.core.events import CallEvent, Cost
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.metrics import Metrics
from call_ledger.worker.consumer import Consumer
from tests.support.workers import platform_event

ADMIN = "admin-token"
ORG7 = "org-seven-token"
ORG8 = "org-eight-token"
TOKENS = f"{ADMIN},7={ORG7},8={ORG8}"
DAY_US = 86_400_000_000


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


event = platform_event


def call(sid: str, start_us: int, *, status: str = "completed", duration: int | None = 60,
         org: int | None = None, assistant: int | None = None, name: str | None = None,
         customer: str | None = None, cost: int | None = None) -> list[CallEvent]:
    """A call's events: its status (at start_us), metadata, and an llm cost."""
    events = [event(sid, f"{sid}-s", start_us, status=status,
                    **({"duration": duration} if duration is not None else {}))]
    meta: dict[str, Any] = {}
    if org is not None:
        meta["organization_id"] = org
    if assistant is not None:
        meta["assistant_id"] = assistant
    if name is not None:
        meta["assistant_name"] = name
    if customer is not None:
        meta["customer_phone_number"] = customer
        meta["to_phone_number"] = "+15550000000"
    if meta:
        events.append(event(sid, f"{sid}-m", start_us + 1000, **meta))
    if cost is not None:
        events.append(event(sid, f"{sid}-u", start_us + 2000,
                            costs=(Cost(component="llm", amount_nano=cost, currency="USD"),)))
    return events


async def load(store: Store, settings: Settings, events: list[CallEvent]) -> None:
    for e in events:
        await store.append(e.model_dump_json().encode())
    await Consumer(store, settings, Metrics()).run_burst()


BASE_US = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z
