"""The app factory: one aiohttp application per role.

`serve` = intake + apply loop + read API; `worker` = intake + apply loop; `api` = read API;
`intake` = webhooks only (no apply loop, no read API), for deployments that scale the
webhook-facing processes apart from the apply loop; `deliver` = fan-out and delivery of outbound call
events only (SPEC §15), which `serve` and `worker` also run. Every role serves /healthz, /readyz, /metrics (on
LEDGER_METRICS_PORT instead, when set: call_ledger.web.serving) and /openapi.json.
"""

from typing import Literal

from aiohttp import web

from call_ledger.api.app import add_read_api
from call_ledger.api.openapi import add_openapi_route
from call_ledger.settings import Settings
from call_ledger.store import Store
from call_ledger.web.base import base_app
from call_ledger.worker.app import add_archiver, add_consumer, add_outbound
from call_ledger.worker.intake import add_intake

Role = Literal["serve", "worker", "api", "intake", "deliver"]


def create_app(
    settings: Settings, role: Role = "serve", store: Store | None = None, *, run_consumer: bool = True
) -> web.Application:
    """Build the app for `role`.

    Tests pass their own `store` and `run_consumer=False`, then drive the worker in burst mode.
    """
    app = base_app(settings, store)
    if role == "deliver":  # /healthz, /readyz, /metrics only
        if run_consumer:
            add_outbound(app)
        return app
    add_openapi_route(app)
    if role in ("serve", "worker", "intake"):
        add_intake(app, settings)
        if run_consumer and role != "intake":
            add_consumer(app)
            add_outbound(app)
            add_archiver(app)
    if role in ("serve", "api"):
        add_read_api(app, settings)
    return app
