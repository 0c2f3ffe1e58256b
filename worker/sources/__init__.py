"""Webhook sources: one module each, registered here (one line per source)."""

from call_ledger.worker.sources.base import Source, WebhookRequest
from call_ledger.worker.sources.platform import PlatformSource
from call_ledger.worker.sources.plivo import PlivoSource
from call_ledger.worker.sources.telnyx import TelnyxSource
from call_ledger.worker.sources.twilio import TwilioSource
from call_ledger.worker.sources.vonage import VonageSource

SOURCES: tuple[type[Source], ...] = (
    PlatformSource,
    TwilioSource,
    TelnyxSource,
    VonageSource,
    PlivoSource,
)

__all__ = ["SOURCES", "Source", "WebhookRequest"]
