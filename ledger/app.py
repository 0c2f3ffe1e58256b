"""The app factory: one aiohttp application per role.

`serve` = intake + apply loop + read API; `worker` = intake + apply loop; `api` = read API;
`intake` = webhooks only (no apply loop, no read API), for deployments that scale the
webhook-facing processes apart from the apply loop. Every role serves /healthz, /readyz, /metrics (on
LEDGER_METRICS_PORT instead, when set: ledger.serving) and /openapi.json.
"""

from typing import Literal

from aiohttp import web

from ledger.settings import Settings
from ledger.store import Store
from ledger.web import base_app

Role = Literal["serve", "worker", "api", "intake"]


def create_app(
    settings: Settings, role: Role = "serve", store: Store | None = None, *, run_consumer: bool = True
) -> web.Application:
    """Build the app for `role`.

    Tests pass their own `store` and `run_consumer=False`, then drive the worker in burst mode.
    """
    # The roles' modules stand on this package, so they are imported here, not at the top.
    from api.app import add_read_api
    from worker.app import add_consumer
    from worker.intake import add_intake

    app = base_app(settings, store)
    if role in ("serve", "worker", "intake"):
        add_intake(app, settings)
        if run_consumer and role != "intake":
            add_consumer(app)
    if role in ("serve", "api"):
        add_read_api(app, settings)
    return app
