"""structlog, configured once: JSON lines on stdout, a console renderer on a terminal.

Log events are snake_case names with key-value fields. Nothing that could be a
secret is ever bound: handlers log outcomes, ids and sources, never headers.
Library lines (stdlib logging: aiohttp, asyncio, redis) go through the same
renderer after `ledger.redact.ForeignRecords` has taken out what they quote, and
every rendered line passes `ledger.redact.Redactor` (SPEC §8).
"""

import logging
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from ledger.redact import ForeignRecords, Redactor
from ledger.settings import Settings


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def secret_values(settings: Settings) -> list[str]:
    """The configured secrets as they could appear in text, for the last-line redactor.

    API tokens are absent: settings hold only their SHA-256 digests (a token in a line is caught
    by the `Bearer …` rule instead).
    """
    values = [secret.get_secret_value() for secret in (
        settings.twilio_auth_token, settings.plivo_auth_token, settings.vonage_signature_secret,
        settings.platform_webhook_secret, settings.telnyx_public_key) if secret is not None]
    if settings.platform_webhook_secret is not None:  # the key is also used without its prefix
        values.append(settings.platform_webhook_secret.get_secret_value().removeprefix("whsec_"))
    for node in (settings.redis_url or "").split(","):
        try:
            password = urlsplit(node.strip()).password
        except ValueError:
            password = None
        if password:
            values.append(password)
    return values


def configure_logging(log_format: str = "auto", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Configure structlog (and route stdlib logging, e.g. aiohttp's, through the same format)."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer, redactor.processor],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[ForeignRecords(redactor), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer, redactor.processor],
            pass_foreign_args=True,  # ForeignRecords reads aiohttp's peer address from them, then drops them
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party chatter: warnings and up
