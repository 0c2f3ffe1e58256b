"""One exception type per failure family.

The HTTP layer translates these to status codes in exactly one place
(`call_ledger.web.base.error_middleware`); store and parsing code never raise `web.HTTP*`.
Messages are shown to clients and logged, so they never carry a secret, a token or
a signature.
"""


class LedgerError(Exception):
    """Base of every error call-ledger raises on purpose."""

    status = 500
    code = "internal_error"

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides its JSON body."""
        return {}


class PayloadTooLarge(LedgerError):
    status = 413
    code = "payload_too_large"


class SignatureInvalid(LedgerError):
    """Missing or wrong signature, or a timestamp outside the accepted window."""

    status = 401
    code = "invalid_signature"


class SignatureReused(SignatureInvalid):
    """An authentic signature presented again with other parameters (a moved name/value boundary).

    Twilio and Plivo sign the plain concatenation of names and values, so a captured request
    re-split (`Event=Hangup` as `Even=tHangup`) still verifies: see `call_ledger.core.replay`.
    """

    outcome = "rejected_replay"  # its own metrics outcome, apart from wrong signatures


class Unauthorized(LedgerError):
    status = 401
    code = "unauthorized"


class SourceNotConfigured(LedgerError):
    status = 404
    code = "source_not_configured"


class NotFound(LedgerError):
    status = 404
    code = "not_found"


class JournalOff(NotFound):
    """/events on a service that keeps no journal (LEDGER_JOURNAL=off)."""

    code = "journal_off"


class RequestTimeout(LedgerError):
    """The client did not send its body within LEDGER_READ_TIMEOUT_S."""

    status = 408
    code = "request_timeout"


class DurabilityUnavailable(Exception):
    """LEDGER_DURABLE_ACK=aof, but this Redis cannot confirm writes to its AOF."""


class StoreUnreachable(Exception):
    """At start-up, no Redis of LEDGER_REDIS_URL answered in time: start-up stops."""


class StoreRefused(Exception):
    """At start-up, a Redis of LEDGER_REDIS_URL answered but refused us (credentials, ACL): start-up
    stops at once, since asking again gets the same answer. The message never holds the URL."""


class LayoutMismatch(Exception):
    """Redis holds data in a key layout this version does not read: start-up stops."""


class MalformedBody(LedgerError):
    """The body cannot be parsed at all (not JSON, not a form)."""

    status = 400
    code = "malformed_body"


class InvalidEvent(LedgerError):
    """Parsable, but lacks what a call event needs (call id, known status, valid amount...)."""

    status = 422
    code = "invalid_event"


class InvalidQuery(LedgerError):
    """A read API query parameter that is missing its form (the message names it)."""

    status = 422
    code = "invalid_parameter"


class InvalidBody(LedgerError):
    """A JSON request body (the endpoints API, SPEC §15) that is not of its form (the message names the field)."""

    status = 422
    code = "invalid_body"


class TooManyEndpoints(LedgerError):
    """This organization already has LEDGER_MAX_ENDPOINTS webhook endpoints (SPEC §15): delete one first."""

    status = 409
    code = "too_many_endpoints"


class EndpointBusy(LedgerError):
    """Other requests kept changing this webhook endpoint while it was being changed: send the request again."""

    status = 409
    code = "conflict"


class TooManyExports(LedgerError):
    """This organization already runs LEDGER_MAX_EXPORTS exports (SPEC §14)."""

    status = 429
    code = "too_many_exports"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StoreUnavailable(LedgerError):
    """Redis could not take or give the data; the caller should retry."""

    status = 503
    code = "store_unavailable"


class ArchiveUnavailable(LedgerError):
    """The archive could not be read or written now (SPEC §16): its store does not answer, refuses the
    credentials, or is not configured (LEDGER_ARCHIVE_URL). The message says which, never a secret."""

    status = 503
    code = "archive_unavailable"


class ArchiveConfigError(ValueError):
    """LEDGER_ARCHIVE_URL can never work (another scheme, a malformed URL, s3fs missing): one line, at
    start-up."""


class ClaimPending(StoreUnavailable):
    """The signature's first use is held by this process, unconfirmed by Redis (which decides:
    first claim wins), and this request carries other parameters: retry once Redis answers."""

    code = "signature_claim_pending"
    outcome = "deferred_replay"


class Unapplicable(Exception):
    """An event the worker cannot apply (e.g. a currency with no configured FX rate).

    Not an HTTP error: the event stays pending and, after LEDGER_MAX_DELIVERIES
    deliveries, moves to the dead-letter stream with this message as its reason.
    """


class Refused(Unapplicable):
    """An event that no redelivery can apply (SPEC §8: another provider's event on a call,
    the call's event or call_meta bound reached): dead-lettered at once, with the reason.
    `call-ledger dlq replay` applies it if the cause is lifted (a raised bound)."""
