"""What every webhook source implements, and the request it is given.

A source is one module under `worker/sources/` with one class: built from settings
(or `None` when its secret is not configured), it verifies the raw request and
parses it into a `CallEvent`. Both steps are plain synchronous functions of the
request, so they are tested without HTTP; the intake handler does the I/O.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Protocol

from call_ledger.core.events import CallEvent
from call_ledger.core.replay import SignatureUse
from call_ledger.settings import Settings
from call_ledger.worker.sources.fields import decode_form


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook as received: raw bytes first, nothing parsed yet."""

    method: str
    url: str  # as the provider called it: LEDGER_PUBLIC_URL's base + the request's path and query
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy, or a CIMultiDict in tests)
    body: bytes
    received_at: float  # unix seconds, for signature timestamp windows
    query: tuple[tuple[str, str], ...] = field(default=())

    @cached_property
    def form(self) -> list[tuple[str, str]]:
        """Form parameters of a urlencoded body (strict UTF-8; MalformedBody otherwise).

        Decoded once per request: the signature check and the parser both need them.
        """
        return decode_form(self.body)


class Source(Protocol):
    """The interface of one webhook source (a provider, or the platform)."""

    name: ClassVar[str]
    # The environment variable that holds the secret: named in the 404's log line.
    secret_variable: ClassVar[str]
    methods: ClassVar[frozenset[str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Source | None":
        """The configured source, or None when its secret is not set."""
        ...

    def verify(self, request: WebhookRequest) -> SignatureUse | None:
        """Raise `SignatureInvalid` unless the request is authentic and fresh.

        Sources that sign names and values concatenated (Twilio, Plivo) return the
        signature that matched with a digest of the parameters, so that intake can refuse
        the same signature with other parameters (`call_ledger.core.replay`). Sources that sign the
        raw bytes with a timestamp (platform, Telnyx, Vonage) return None: their bytes
        cannot be re-split, and a replay is stale or deduplicated by its event id.
        """
        ...

    def parse(self, request: WebhookRequest) -> CallEvent | None:
        """The normalised event; None for an event kind the ledger does not use.

        Raise `MalformedBody` when the body cannot be parsed and `InvalidEvent`
        when it lacks what a call event needs.
        """
        ...
