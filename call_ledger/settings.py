"""All configuration, read once from `LEDGER_*` environment variables.

Nothing reads the environment at import time: `Settings()` is built by the CLI
and passed in; tests build `Settings(...)` directly.
"""

import hashlib
import os
import secrets
import socket
from collections.abc import Mapping, Set
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, InstanceOf, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from call_ledger.core.money import normalise_currency, parse_rate
from call_ledger.core.outbound import DEFAULT_RETRY_SCHEDULE, parse_retry_schedule
from call_ledger.core.policy import Policy
from call_ledger.core.pricing import (
    EMPTY_TABLE,
    PriceTable,
    PricingError,
    check_currencies,
    parse_document,
    parse_text,
)

PROVIDERS = ("twilio", "telnyx", "vonage", "plivo")


def load_pricing_file(path: str | Path, ledger_currency: str, fx_currencies: Set[str]) -> PriceTable:
    """Read and validate a pricing file (LEDGER_PRICING_FILE); PricingError (one line per problem) when invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PricingError([f"{path}: cannot be read: {reason}"]) from None
    return parse_document(parse_text(text, path.name), ledger_currency, fx_currencies, str(path))


def _default_consumer_name() -> str:
    # Unique per process: two replicas on one host, or a restarted pod, never share a name.
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def redis_urls(value: str) -> list[str]:
    """The nodes of LEDGER_REDIS_URL (one URL, or several comma-separated for a Cluster)."""
    return [part.strip() for part in value.split(",") if part.strip()]


# The query parameters LEDGER_REDIS_URL may carry: redis-py's own TLS options, on rediss:// only.
# Anything else is refused: redis-py would take socket_timeout, max_connections, retry_on_error...
# from the URL too, and silently override what call_ledger.store.records chose for them.
REDIS_FILE_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
REDIS_CHOICE_PARAMETERS = {"ssl_cert_reqs": ("none", "optional", "required"),
                           "ssl_check_hostname": ("true", "false")}
REDIS_PARAMETERS = (*REDIS_FILE_PARAMETERS, *REDIS_CHOICE_PARAMETERS)


class RedisOptions(NamedTuple):
    """LEDGER_REDIS_URL taken apart: what a Cluster client is built from (a single node's client
    reads the URL itself, through redis-py's `from_url`, which understands the same parameters)."""

    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    tls: bool
    tls_options: dict[str, Any]  # keyword arguments of redis-py's clients: ssl_ca_certs=..., ssl_check_hostname=...


def redis_options(value: str) -> RedisOptions:
    """The nodes, credentials and TLS options of a valid LEDGER_REDIS_URL. Credentials and options
    come from the first node that gives them (the validator made sure no node disagrees)."""
    urls = [urlsplit(url) for url in redis_urls(value)]
    nodes = [(parts.hostname or "127.0.0.1", parts.port or 6379) for parts in urls]
    first = next((parts for parts in urls if parts.username or parts.password), urls[0])
    query = next((parts.query for parts in urls if parts.query), "")
    tls_options: dict[str, Any] = {}
    for name, text in parse_qsl(query, keep_blank_values=True):
        tls_options[name] = text.lower() == "true" if name == "ssl_check_hostname" else text
    return RedisOptions(nodes, unquote(first.username) if first.username else None,
                        unquote(first.password) if first.password else None, urls[0].scheme == "rediss", tls_options)


def _check_redis_query(scheme: str, query: str) -> None:
    """Refuse what redis-py would misread or ignore; messages name parameters, never values that
    could be secret (a file path is not)."""
    seen: set[str] = set()
    for name, text in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in REDIS_PARAMETERS:
            raise ValueError(f"unknown query parameter {name!r} (accepted, on rediss:// only: "
                             f"{', '.join(REDIS_PARAMETERS)})")
        if scheme != "rediss":
            raise ValueError(f"{name} is a TLS option: it needs a rediss:// URL")
        if name in seen:
            raise ValueError(f"{name} is given twice")
        seen.add(name)
        if name in REDIS_FILE_PARAMETERS and not Path(text).is_file():
            raise ValueError(f"{name}: no such file {text!r}")
        choices = REDIS_CHOICE_PARAMETERS.get(name)
        if choices and text.lower() not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")
    if ("ssl_certfile" in seen) != ("ssl_keyfile" in seen):
        raise ValueError("ssl_certfile and ssl_keyfile (a client certificate) go together")


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(part).strip() for part in value if str(part).strip()]
    raise ValueError("expected a comma-separated list")


class ApiToken(NamedTuple):
    """One configured read-API token: its SHA-256 digest, and the organization it is
    scoped to (None: an unscoped token, which sees every call)."""

    digest: bytes
    organization_id: int | None = None


def _api_token(entry: str) -> ApiToken:
    """`<token>`, `sha256:<hex>`, or either after `<organization_id>=` (digits before the first `=`)."""
    scope: int | None = None
    head, sep, rest = entry.partition("=")
    if sep and head.strip().isdigit():
        scope = int(head.strip())
        if not 1 <= scope < 2**63:
            raise ValueError("a scoped token's organization id must be a positive integer")
        entry = rest.strip()
        if not entry:
            raise ValueError("a scoped entry needs a token after <organization_id>=")
    if entry.startswith("sha256:"):
        try:
            raw = bytes.fromhex(entry.removeprefix("sha256:").strip().lower())
        except ValueError:
            raise ValueError("a sha256: entry must be 64 hex digits") from None
        if len(raw) != 32:
            raise ValueError("a sha256: entry must be 64 hex digits")
        return ApiToken(raw, scope)
    return ApiToken(hashlib.sha256(entry.encode()).digest(), scope)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Unset: /metrics is served on LEDGER_PORT with everything else. Set: only on this port (same
    # LEDGER_HOST), so that a NetworkPolicy, which sees ports and never paths, can admit the scraper
    # to the metrics and nobody else (deploy/README.md).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # None: the embedded in-memory store (nothing survives a restart). A Redis Cluster may be given
    # as several nodes, comma-separated: any one that answers is enough to start.
    redis_url: str | None = None
    # How long start-up waits for Redis to answer before it stops with one line.
    redis_startup_timeout_s: float = Field(default=10.0, ge=0)
    redis_cluster: bool = False
    key_prefix: str = Field(default="cl", pattern=r"^[A-Za-z0-9_.-]+$")

    # Read API bearer tokens, stored only as SHA-256 digests: `sha256:<hex>` or a plain token,
    # each optionally scoped to one organization as `<organization_id>=<entry>` (SPEC §10).
    api_tokens: Annotated[tuple[ApiToken, ...], NoDecode] = ()

    # External base URL that URL-signed providers (Twilio, Plivo) called; required when either is
    # configured (checked where intake builds them: the api role does not need it).
    public_url: str | None = None
    twilio_auth_token: SecretStr | None = None
    # The HMAC Twilio signs with: chosen here, never by the unsigned X-Twilio-Webhooks-Signature-Settings.
    twilio_signature_algorithm: Literal["sha1", "sha256"] = "sha1"
    telnyx_public_key: SecretStr | None = None
    vonage_signature_secret: SecretStr | None = None
    # When set, a Vonage JWT whose application_id claim differs is refused (401).
    vonage_application_id: str | None = None
    plivo_auth_token: SecretStr | None = None
    platform_webhook_secret: SecretStr | None = None
    signature_tolerance_s: int = Field(default=300, ge=1)
    # How long an accepted Twilio/Plivo signature is remembered with its parameters (7 days):
    # within it, the signature cannot be reused with other parameters (call_ledger.core.replay).
    signature_ttl_s: int = Field(default=7 * 86_400, ge=1)

    currency: str = "USD"
    fx_rates: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    vonage_currency: str = "EUR"
    plivo_currency: str = "USD"
    # (provider, direction) -> price per started minute, in the ledger currency.
    telephony_rates: Annotated[dict[tuple[str, str], Decimal], NoDecode] = Field(default_factory=dict)
    # LEDGER_PRICING_FILE (SPEC §11): a path, read and validated here, so that a bad file stops
    # start-up; the field then holds the table (tests may pass a PriceTable). Declared after
    # currency and fx_rates: its validator checks every price's currency against them.
    pricing_file: Annotated[InstanceOf[PriceTable] | None, NoDecode] = None

    # Stream shards (SPEC §12): a call's events go to one of this many streams, by a hash of its SID.
    stream_shards: int = Field(default=1, ge=1, le=256)
    consumer_name: str = Field(default_factory=_default_consumer_name, min_length=1)
    batch_size: int = Field(default=200, ge=1, le=10_000)
    claim_idle_ms: int = Field(default=15_000, ge=0)
    # After a batch that drained the stream (fewer entries than batch_size), wait this long
    # before reading again, so that the next batch is several events, not one: a batch costs
    # three round trips whatever its size (see worker/consumer.py). 0: read again at once.
    apply_linger_ms: float = Field(default=1.0, ge=0, le=1000)
    max_deliveries: int = Field(default=5, ge=1)
    # Seconds an acknowledged event stays in the stream (unacknowledged ones are never trimmed).
    stream_retention: int = Field(default=86_400, ge=0)
    # Days a dead letter stays in the dead-letter stream (SPEC §14: the stream is bounded): the
    # worker's maintenance drops older ones, counted and logged. 0 keeps them forever (unbounded).
    dlq_retention_days: int = Field(default=30, ge=0, le=36_500)
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    # "aof": answer 2xx only once the event reached the AOF on disk (WAITAOF, Redis >= 7.2);
    # "replica": only once at least one replica has it (WAIT 1; on a Cluster, of the shard's master).
    durable_ack: Literal["none", "aof", "replica"] = "none"
    durable_ack_timeout_ms: int = Field(default=1000, ge=1)
    # "off": keep no copy of applied events (no /events, no per-event /costs entries): about
    # half of a call's Redis memory. Duplicates are still recognised by the call's order index.
    journal: Literal["on", "off"] = "on"
    # SPEC §8 bounds per call: events applied (later ones are dead-lettered), and the merged
    # call_meta (an event alone above it is 422 at intake; one whose merge would pass it is
    # dead-lettered).
    max_events_per_call: int = Field(default=10_000, ge=1)
    max_call_meta_bytes: int = Field(default=16 * 1024, ge=2)
    max_call_meta_keys: int = Field(default=256, ge=0)
    # What a worker keeps in memory about calls it wrote recently (so a busy call is not
    # re-read before each batch), bounded in bytes, not entries.
    worker_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # A webhook body must arrive within this many seconds (slow clients get 408).
    read_timeout_s: float = Field(default=10.0, gt=0)
    # A request's headers must be complete this many seconds after its first byte (slow-header clients
    # are disconnected). A connection with no request in progress and no byte of a next one is idle.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # An idle connection (just opened, or kept alive after a response) is closed after this many seconds.
    keepalive_timeout_s: float = Field(default=15.0, gt=0)
    # Open connections per process; past it a new connection is answered 503 and closed at once.
    max_connections: int = Field(default=1000, ge=1)
    # Open connections per peer (an IPv4 address, an IPv6 /64); past it a new connection from that
    # peer is answered 503 and closed at once. Below max_connections, so that one address always
    # leaves room for the others; 0 turns it off (behind a proxy, every connection is the proxy's).
    max_connections_per_peer: int = Field(default=64, ge=0)
    # A streamed answer (an export) whose client takes no data for this many seconds is cut off:
    # every write of it is bounded, so a reader that stops holds nothing for longer (SPEC §14).
    write_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Exports running at once per organization, in each API process (an unscoped token is a
    # bucket of its own); past it an export is answered 429 with Retry-After (SPEC §14).
    max_exports: int = Field(default=2, ge=1, le=1000)

    # Outbound call events (SPEC §15). A terminal call is finalized once no event has changed its
    # record for this long.
    finalize_after_s: int = Field(default=120, ge=1, le=86_400)
    # Seconds to wait after each failed attempt; after the last, the message is failed (recoverable).
    outbound_retry_schedule: Annotated[tuple[int, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    outbound_timeout_s: float = Field(default=15.0, gt=0, le=300)
    # Endpoints may point at loopback, private, link-local addresses (tests, a private network).
    outbound_allow_private: bool = False
    # Deliveries in flight per process (all endpoints), and per endpoint per process: a slow
    # endpoint holds at most its own share.
    outbound_concurrency: int = Field(default=64, ge=1, le=10_000)
    outbound_per_endpoint: int = Field(default=4, ge=1, le=1000)
    # Delivered and failed messages stay recoverable (and their attempts listed) this long.
    outbound_retention_days: int = Field(default=7, ge=1, le=3650)
    max_endpoints: int = Field(default=50, ge=1, le=10_000)

    # Retention and the archive (SPEC §16). Unset: nothing is archived. A directory, file://..., or
    # s3://bucket/prefix (credentials and endpoint from the AWS environment: docs/archive.md).
    archive_url: str | None = None
    # A finalized call whose ended_at is older than this is archived (0: as soon as it is finalized).
    retention_days: int = Field(default=30, ge=0, le=36_500)
    # How often a worker runs an archive pass (one worker at a time holds the archive's lock).
    archive_every_s: int = Field(default=300, ge=1, le=86_400)

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: object) -> tuple[ApiToken, ...]:
        if isinstance(value, tuple | list) and all(isinstance(t, ApiToken) for t in value):
            return tuple(value)
        return tuple(_api_token(entry) for entry in _split(value))

    @field_validator("outbound_retry_schedule", mode="before")
    @classmethod
    def _retry_schedule(cls, value: object) -> tuple[int, ...]:
        if isinstance(value, tuple | list):
            return parse_retry_schedule(",".join(str(v) for v in value))
        return parse_retry_schedule(str(value))

    @field_validator("currency", "vonage_currency", "plivo_currency", mode="before")
    @classmethod
    def _currency(cls, value: object) -> str:
        return normalise_currency(value)

    @field_validator("fx_rates", mode="before")
    @classmethod
    def _fx(cls, value: object) -> dict[str, Decimal]:
        if isinstance(value, dict):
            return {normalise_currency(k): parse_rate(str(v)) for k, v in value.items()}
        rates = {}
        for entry in _split(value):
            code, sep, rate = entry.partition("=")
            if not sep:
                raise ValueError(f"{entry!r}: expected CODE=RATE, e.g. EUR=1.08")
            rates[normalise_currency(code)] = parse_rate(rate)
        return rates

    @field_validator("telephony_rates", mode="before")
    @classmethod
    def _rates(cls, value: object) -> dict[tuple[str, str], Decimal]:
        if isinstance(value, dict):
            return {tuple(k): parse_rate(str(v)) for k, v in value.items()}
        rates = {}
        for entry in _split(value):
            key, sep, rate = entry.partition("=")
            provider, colon, direction = key.strip().lower().partition(":")
            if not sep or not colon:
                raise ValueError(f"{entry!r}: expected provider:direction=rate, e.g. twilio:inbound=0.0085")
            if provider not in PROVIDERS or direction not in ("inbound", "outbound"):
                raise ValueError(f"{entry!r}: provider must be one of {', '.join(PROVIDERS)}, "
                                 "direction inbound or outbound")
            rates[(provider, direction)] = parse_rate(rate)
        return rates

    @field_validator("pricing_file", mode="before")
    @classmethod
    def _pricing(cls, value: object, info: ValidationInfo) -> PriceTable | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        currency, fx_rates = info.data.get("currency"), info.data.get("fx_rates")
        if currency is None or fx_rates is None:
            return None  # their own error is reported; the file's currencies cannot be checked
        if isinstance(value, PriceTable):
            check_currencies(value, currency, set(fx_rates))
            return value
        if not isinstance(value, str | Path):
            raise ValueError("expected the path of a YAML or JSON pricing file")
        return load_pricing_file(value, currency, set(fx_rates))

    @property
    def pricing(self) -> PriceTable:
        """The usage price table; empty without LEDGER_PRICING_FILE."""
        return self.pricing_file or EMPTY_TABLE

    @cached_property
    def policy(self) -> Policy:
        """What the rules need of these settings (call_ledger.core.policy): built once, as the
        settings never change after start-up."""
        return Policy(currency=self.currency, fx_rates=self.fx_rates, telephony_rates=self.telephony_rates,
                      pricing=self.pricing, max_call_meta_keys=self.max_call_meta_keys,
                      max_call_meta_bytes=self.max_call_meta_bytes)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> "Settings":
        """A copy (tests change a field or two this way) whose policy is built from its own fields:
        pydantic copies the instance's __dict__, and with it a policy cached before the update."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("policy", None)
        return copied

    @field_validator("archive_url", mode="before")
    @classmethod
    def _archive_url(cls, value: object) -> object:
        """Blank is unset; a URL's scheme must be one the archive writes to (call_ledger.archive)."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            scheme = value.partition("://")[0].lower() if "://" in value else ""
            if scheme not in ("", "file", "s3"):
                raise ValueError(f"the archive is a directory, file://... or s3://bucket/prefix, not {scheme}://")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("max_connections_per_peer")
    @classmethod
    def _per_peer_below_total(cls, value: int, info: ValidationInfo) -> int:
        total = info.data.get("max_connections")
        # Equal would let one peer take every connection again: the very thing this cap prevents.
        if value and total is not None and value >= total:
            raise ValueError(f"must be below LEDGER_MAX_CONNECTIONS ({total}) so that one address cannot take "
                             "every connection; or 0 to turn the per-peer cap off (behind a proxy)")
        return value

    @field_validator("twilio_signature_algorithm", mode="before")
    @classmethod
    def _algorithm(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("vonage_application_id")
    @classmethod
    def _application_id(cls, value: str | None) -> str | None:
        return value.strip() if value is not None and value.strip() else None

    @field_validator("platform_webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            # Message names the rule, never the value.
            raise ValueError("must be a Standard Webhooks secret starting with whsec_")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # No message here quotes the URL: it may hold a password.
        if value is None or not value.strip():
            return None
        nodes = [urlsplit(url) for url in redis_urls(value)]
        for parts in nodes:
            if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
                raise ValueError("each entry must be a redis://host:port or rediss://host:port URL")
            try:
                parts.port  # noqa: B018 (a port that is not a number raises here)
            except ValueError:
                raise ValueError("a port in it is not a number") from None
            if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("its database (the path after host:port) must be a number, as in redis://host:6379/0")
            if parts.scheme == "unix" and (len(nodes) > 1 or not parts.path):
                raise ValueError("a unix:// socket is one node, named by its path (unix:///run/redis.sock)")
            _check_redis_query(parts.scheme, parts.query)
        if len(nodes) > 1:  # a Cluster: one client, so one scheme, one set of credentials and options
            if len({parts.scheme for parts in nodes}) > 1:
                raise ValueError("its nodes mix redis:// and rediss://: a Cluster client speaks TLS to all or none")
            for attribute in ("username", "password", "query"):
                given = {getattr(parts, attribute) for parts in nodes} - {None, ""}
                if len(given) > 1:
                    what = "query parameters" if attribute == "query" else "credentials"
                    raise ValueError(f"its nodes give different {what}: give them on the first node only, "
                                     "or the same on every node")
        return value.strip()

    @model_validator(mode="after")
    def _metrics_port_apart(self) -> "Settings":
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("LEDGER_METRICS_PORT must differ from LEDGER_PORT (leave it unset to serve /metrics "
                             "on LEDGER_PORT)")
        return self

    @model_validator(mode="after")
    def _several_nodes_are_a_cluster(self) -> "Settings":
        if self.redis_url and len(redis_urls(self.redis_url)) > 1 and not self.redis_cluster:
            raise ValueError("LEDGER_REDIS_URL lists several nodes: that needs LEDGER_REDIS_CLUSTER=true")
        return self

    @model_validator(mode="after")
    def _replica_durability(self) -> "Settings":
        if self.durable_ack == "replica" and self.redis_url is None:
            raise ValueError("LEDGER_DURABLE_ACK=replica needs LEDGER_REDIS_URL (the embedded store has no replica)")
        # On a Cluster too: intake sends each node's XADDs and their WAIT on one connection to
        # that node (call_ledger.store.append_batcher), so the WAIT counts the replicas of those writes.
        return self

    @model_validator(mode="after")
    def _fx_of_ledger_currency(self) -> "Settings":
        if self.currency in self.fx_rates:
            raise ValueError(f"LEDGER_FX_RATES must not give a rate for the ledger currency {self.currency}")
        return self
