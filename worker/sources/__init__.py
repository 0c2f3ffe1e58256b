"""Webhook sources: one module each, registered here (one line per source)."""

from worker.sources.base import Source, WebhookRequest
from worker.sources.platform import PlatformSource
from worker.sources.telnyx import TelnyxSource
from worker.sources.vonage import VonageSource

SOURCES: tuple[type[Source], ...] = (
    PlatformSource,
    TelnyxSource,
    VonageSource,
)

__all__ = ["SOURCES", "Source", "WebhookRequest"]
