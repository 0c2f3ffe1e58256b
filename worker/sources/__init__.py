"""Webhook sources: one module each, registered here (one line per source)."""

from worker.sources.base import Source, WebhookRequest
from worker.sources.platform import PlatformSource

SOURCES: tuple[type[Source], ...] = (
    PlatformSource,
)

__all__ = ["SOURCES", "Source", "WebhookRequest"]
