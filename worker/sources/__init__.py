"""Webhook sources: one module each, registered here (one line per source)."""

from worker.sources.base import Source, WebhookRequest
from worker.sources.platform import PlatformSource
from worker.sources.plivo import PlivoSource
from worker.sources.telnyx import TelnyxSource
from worker.sources.twilio import TwilioSource
from worker.sources.vonage import VonageSource

SOURCES: tuple[type[Source], ...] = (
    PlatformSource,
    TwilioSource,
    TelnyxSource,
    VonageSource,
    PlivoSource,
)

__all__ = ["SOURCES", "Source", "WebhookRequest"]
