"""structlog, configured once: JSON lines on stdout, a console renderer on a terminal.

Log events are snake_case names with key-value fields. Nothing that could be a
secret is ever bound: handlers log outcomes, ids and sources, never headers.
Library lines (stdlib logging: aiohttp, asyncio, redis) go through the same
renderer after `call_ledger.web.redact.ForeignRecords` has taken out what they quote, and
every rendered line passes `call_ledger.web.redact.Redactor` (SPEC §8).
"""

import asyncio
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog

from call_ledger.settings import Settings
from call_ledger.web.redact import ForeignRecords, Redactor


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


class UtcStamper:
    """structlog's TimeStamper(fmt="iso", utc=True), the same text ("2026-12-01T16:00:45.123456Z",
    no fraction on a whole second), with the date and time of day formatted once per second:
    datetime.isoformat per line was 2% of the apply loop's CPU."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second, self._text = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        event_dict["timestamp"] = f"{self._text}.{micros:06d}Z" if micros else f"{self._text}Z"
        return event_dict


class TickLogger:
    """A structlog logger that writes the lines of one event-loop tick with one write.

    The worker logs a line per event; one write and flush per line was a system call per
    event. Lines wait at most until the loop's next turn (or 1,000 lines); outside a running
    loop, and at exit, they are written at once. A SIGKILL can lose the lines of the tick in
    hand, never an event.
    """

    MAX_LINES = 1000

    def __init__(self, file: Any) -> None:
        self._file = file
        self._lines: list[str] = []
        self._scheduled = False

    def msg(self, message: str) -> None:
        self._lines.append(message)
        if len(self._lines) >= self.MAX_LINES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError):  # stdout closed (a pipe whose reader left, or at exit)
            pass


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
        if password:  # as written in the URL (percent-encoded) and as sent to Redis
            values += [password, unquote(password)]
    return values


def configure_logging(log_format: str = "auto", level: str = "info", secrets: Iterable[str] = ()) -> "LogOutput":
    """Configure structlog (and route stdlib logging, e.g. aiohttp's, through the same format); the
    output it writes to, for the process's shutdown path to flush (`LogOutput.flush`)."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    redactor = Redactor(secrets)
    stamper = UtcStamper()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamper,
    ]
    chain = [*shared, structlog.processors.format_exc_info, renderer, redactor.processor]
    level_number = logging.getLevelName(level.upper())
    previous = _configured_output()
    if previous is not None:  # loggers cached with it still write to it: what waits goes out first
        previous.flush()
    logger = TickLogger(sys.stdout)  # one buffer for every logger name: lines stay in order
    lines = EventLines(tuple(chain), stamper, redactor, logger) if not use_console and level_number <= logging.INFO \
        else None
    output = LogOutput(logger, lines)
    # One list, changed in place: a module's logger binds the list at its first use
    # (cache_logger_on_first_use), and must see a later configuration (or a test's capture_logs).
    processors = structlog.get_config()["processors"]
    if not isinstance(processors, list):  # configured elsewhere with another kind of sequence
        processors = []
    processors[:] = chain
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=output,
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(shared, renderer, redactor)
    return output


def _route_stdlib_logging(shared: list[Any], renderer: Any, redactor: Redactor) -> None:
    """Library lines (aiohttp, asyncio, redis) through the same renderer and redactor."""
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


class EventLines:
    """The apply loop's per-event info line, rendered as structlog's chain above would render it
    (same keys in the same order, contextvars, level, timestamp, redaction), without walking it:
    structlog's per-call machinery was half of the line's cost, and the worker writes one line
    per event (SPEC §7). Only while that chain is the configured one (`event_lines`): a test
    capturing logs, or any reconfiguration, gets the lines through structlog again."""

    def __init__(self, chain: tuple[Any, ...], stamper: UtcStamper, redactor: Redactor, logger: TickLogger) -> None:
        self.chain = chain
        self._stamp = stamper
        self._redact = redactor
        self._write = logger.msg

    def __call__(self, event: str, fields: Mapping[str, str | int]) -> None:
        """Write `event` with `fields` (text and integers) as `log.info(event, **fields)` would."""
        line = {**fields, "event": event}
        structlog.contextvars.merge_contextvars(None, "info", line)
        line["level"] = "info"
        self._stamp(None, "info", line)
        self._write(self._redact(orjson.dumps(line).decode()))

    def many(self, lines: Iterable[tuple[str, Mapping[str, str | int]]]) -> None:
        """Write each (event, fields) as `self(event, fields)` would, stamped with one instant (a
        batch's outcomes are decided together): the context, the clock and the redactor's scan are
        taken once for all of them, not once a line (a third of a line's cost)."""
        context = structlog.contextvars.get_contextvars()
        stamp = self._stamp(None, "info", {})["timestamp"]
        rendered = []
        for event, fields in lines:
            line = {**fields, "event": event}
            for key, value in context.items():  # as merge_contextvars: the line's own keys win
                line.setdefault(key, value)
            line["level"] = "info"
            line["timestamp"] = stamp
            rendered.append(orjson.dumps(line).decode())
        if self._redact.clean("\n".join(rendered)):
            for text in rendered:
                self._write(text)
        else:  # something to redact somewhere: each line on its own, as one at a time would be
            for text in rendered:
                self._write(self._redact(text))


class LogOutput:
    """What one `configure_logging` writes to, owned by that configuration (structlog keeps it as
    its logger factory, so no module global holds it): the tick logger every structlog logger
    writes to, and the direct writer of info lines (EventLines) when info lines are JSON."""

    __slots__ = ("lines", "logger")

    def __init__(self, logger: TickLogger, lines: EventLines | None) -> None:
        self.logger = logger
        self.lines = lines

    def __call__(self, *_args: Any) -> TickLogger:
        """structlog's logger factory: one logger for every name."""
        return self.logger

    def flush(self) -> None:
        """Write the lines waiting for the loop's next turn now (the worker: before an XACK; the
        process: on its way out)."""
        self.logger.flush()


def _configured_output() -> LogOutput | None:
    factory = structlog.get_config()["logger_factory"]
    return factory if isinstance(factory, LogOutput) else None


def event_lines() -> EventLines | None:
    """The direct writer of info lines, if info lines are written as JSON by the chain
    `configure_logging` set up (and not, say, captured by a test); None: log through structlog."""
    config = structlog.get_config()
    output = config["logger_factory"]
    writer = output.lines if isinstance(output, LogOutput) else None
    if writer is None or tuple(config["processors"]) != writer.chain:
        return None
    return writer


def log_info(logger: Any, event: str, fields: Mapping[str, str | int]) -> None:
    """`logger.info(event, **fields)`, the hot paths' way (one line per webhook or event)."""
    writer = event_lines()
    if writer is None:
        logger.info(event, **fields)
    else:
        writer(event, fields)


def flush_logs() -> None:
    """Write the lines waiting for the loop's next turn now (the worker: before an XACK)."""
    output = _configured_output()
    if output is not None:
        output.flush()
