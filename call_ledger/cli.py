"""`call-ledger serve | worker | api | intake | deliver | dlq list | dlq replay | pricing check FILE | reindex |
archive`.

Settings are built once here; a bad value stops start-up with one line naming the
variable, never a traceback.
"""

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from pydantic import ValidationError

from call_ledger.app import Role, create_app
from call_ledger.core.errors import DurabilityUnavailable, LayoutMismatch, StoreRefused, StoreUnreachable
from call_ledger.runtime import tune_gc
from call_ledger.settings import Settings
from call_ledger.store.keys import NEWEST_LAYOUT
from call_ledger.web.logs import configure_logging, secret_values
from call_ledger.web.redact import Redactor

if TYPE_CHECKING:
    from call_ledger.store import Store


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            variable = f"LEDGER_{field.upper()}" if field else "configuration"
            message = error["msg"].removeprefix("Value error, ")
            # One line per problem: an invalid LEDGER_PRICING_FILE reports each of its entries' errors.
            for line in message.splitlines():
                print(f"call-ledger: invalid {variable}: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:  # e.g. a secret that is not valid base64
        print(f"call-ledger: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_service(role: Role, settings: Settings) -> None:
    import structlog

    from call_ledger.web import serving

    try:
        app = create_app(settings, role)
    except ValueError as exc:  # a secret that does not decode, for instance
        print(f"call-ledger: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    structlog.get_logger("ledger").info(
        "service_starting", role=role, host=settings.host, port=settings.port,
        store="embedded" if settings.redis_url is None else ("cluster" if settings.redis_cluster else "redis"),
        consumer=settings.consumer_name if role in ("serve", "worker") else None,
    )
    tune_gc()
    # SIGTERM/SIGINT: stop accepting, let in-flight requests finish, then the cleanup
    # contexts stop the consumer (bounded) and close Redis. serving.run returns: exit 0.
    try:
        serving.run(app, settings)
    except (DurabilityUnavailable, LayoutMismatch, StoreRefused, StoreUnreachable, serving.ListenFailed) as exc:
        fail(settings, str(exc))


def fail(settings: Settings, message: str) -> NoReturn:
    """Stop with one line on stderr, exit 2. The messages are built never to hold a secret; the
    redactor the log lines go through checks this line too (a Redis password included)."""
    print(Redactor(secret_values(settings))(f"call-ledger: {message}"), file=sys.stderr)
    raise SystemExit(2) from None


async def _open_store(settings: Settings) -> "Store":
    """The store of `dlq` and `reindex`: as the services do, wait for Redis (one line if it never
    answers or refuses us), so that no command of theirs fails with a traceback."""
    from call_ledger.store import Store
    from call_ledger.web.base import wait_for_redis

    store = Store.from_settings(settings)
    try:
        await wait_for_redis(store, settings)
    except (StoreRefused, StoreUnreachable) as exc:
        await store.close()
        fail(settings, str(exc))
    return store


def _run_command(settings: Settings, command: Coroutine[Any, Any, int]) -> int:
    """`dlq` or `reindex`; Redis lost midway is one line, exit 2 (not a traceback)."""
    from call_ledger.store.errors import REDIS_FAILURES, describe_redis_error

    try:
        return asyncio.run(command)
    except REDIS_FAILURES as exc:
        fail(settings, f"redis: {describe_redis_error(exc).reason}")


async def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url is None:
        print("call-ledger: dlq needs LEDGER_REDIS_URL (the embedded store lives inside `serve`)",
              file=sys.stderr)
        return 2
    store = await _open_store(settings)
    try:
        if args.dlq_command == "list":
            rows = await store.dead_letters(count=args.limit)
            for row in rows:
                event = orjson.loads(row.pop("e") or b"null") if row.get("e") else None
                row["event"] = event
                print(orjson.dumps(row).decode() if args.json else _dlq_line(row))
            if not args.json:
                print(f"{len(rows)} dead-lettered event(s)", file=sys.stderr)
        else:
            moved = await store.replay_dead(args.ids or None)
            for dead_id, new_id in moved:
                print(f"replayed {dead_id} as {new_id}")
            print(f"{len(moved)} event(s) re-queued", file=sys.stderr)
        return 0
    finally:
        await store.close()


async def _reindex(settings: Settings) -> int:
    from call_ledger.store.reindex import reindex

    if settings.redis_url is None:
        print("call-ledger: reindex needs LEDGER_REDIS_URL", file=sys.stderr)
        return 2
    store = await _open_store(settings)
    try:
        await store.check_layout()  # entries are written as the store's layout has them
        seen, written = await reindex(store, settings)
        print(f"{seen} call(s) indexed, {written} entr(y/ies) written", file=sys.stderr)
        return 0
    except LayoutMismatch as exc:
        fail(settings, str(exc))
    finally:
        await store.close()


async def _archive(settings: Settings) -> int:
    """One archive pass now (SPEC §16): what it moved on stdout; a bad URL, missing credentials or an
    unreachable store is one line, exit 2; another process's pass under way, exit 1."""
    from call_ledger.archive import open_archive
    from call_ledger.core.errors import ArchiveConfigError, ArchiveUnavailable
    from call_ledger.web.metrics import Metrics
    from call_ledger.worker.archive import Archiver

    for needed, variable in ((settings.redis_url, "LEDGER_REDIS_URL"), (settings.archive_url, "LEDGER_ARCHIVE_URL")):
        if not needed:
            print(f"call-ledger: archive needs {variable}", file=sys.stderr)
            return 2
    assert settings.archive_url is not None
    try:
        files = open_archive(settings.archive_url)
        await asyncio.to_thread(files.check)
    except (ArchiveConfigError, ArchiveUnavailable) as exc:
        fail(settings, f"archive: {exc}")
    store = await _open_store(settings)
    try:
        report = await Archiver(store, settings, files, Metrics()).run_pass(wait_s=60)
    except ArchiveUnavailable as exc:
        fail(settings, f"archive: {exc}")
    finally:
        await store.close()
    if report is None:
        print("call-ledger: another process is running an archive pass (it kept the lock for 60 s)", file=sys.stderr)
        return 1
    print(f"archived {report.calls} call(s): {report.bytes} bytes in {report.files} file(s) to {settings.archive_url}")
    return 0


async def _layout(args: argparse.Namespace, settings: Settings) -> int:
    """Show the store's layout and who may not read the newest, or move the store to the newest
    (4: short members and a call's core as plain fields): refused, exit 1, while a connection may belong
    to a version that does not read it, or the connections cannot be listed (call_ledger.store.layout).
    Showing writes nothing."""
    from redis.exceptions import ResponseError

    from call_ledger.store.keys import LAYOUTS
    from call_ledger.store.layout import find_blockers, upgrade_layout

    if settings.redis_url is None:
        print("call-ledger: layout needs LEDGER_REDIS_URL (the embedded store lives inside `serve`)", file=sys.stderr)
        return 2
    store = await _open_store(settings)
    try:
        mark = await store.records.layout()
        if not mark:
            await store.records.check_unmarked()  # one line, exit 2: data of a version before marks
        elif mark not in LAYOUTS:
            await store.check_layout()  # one line, exit 2: a layout this version does not read
        if not args.upgrade:
            print(f"layout {mark or 'none yet: the first process to start on the store marks it'}")
            if mark != NEWEST_LAYOUT:
                try:
                    for blocker in await find_blockers(store.redis):
                        print(f"not known to read layout {NEWEST_LAYOUT}: {blocker}")
                except ResponseError as exc:
                    print(f"the connections cannot be listed (CLIENT LIST: {exc})")
            return 0
        move = await upgrade_layout(store.redis, store.keys, force=args.force)
        for blocker in move.blockers:
            print(f"not known to read layout {NEWEST_LAYOUT}: {blocker}", file=sys.stderr)
        if move.unknown:
            print(f"call-ledger: layout stays {move.after or 'unmarked'}: the connections cannot be listed "
                  f"(CLIENT LIST: {move.unknown}); --force moves it without looking", file=sys.stderr)
            return 1
        if move.after != NEWEST_LAYOUT:
            print(f"call-ledger: layout stays {move.after or 'unmarked'}: stop or upgrade the processes above "
                  "(--force moves it anyway)", file=sys.stderr)
            return 1
        print(f"layout {move.before or 'none'} -> {move.after}" if move.before != move.after
              else f"layout {move.after} already")
        return 0
    except LayoutMismatch as exc:
        fail(settings, str(exc))
    finally:
        await store.close()


def _dlq_line(row: dict[str, Any]) -> str:
    event = row.get("event") or {}
    return (f"{row['id']}  source={event.get('source')} call_sid={event.get('call_sid')} "
            f"event_id={event.get('event_id')} deliveries={row.get('deliveries')} reason={row.get('reason')}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="call-ledger", description="Exact per-call records from webhooks.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="intake, worker and read API in one process")
    sub.add_parser("worker", help="webhook intake + apply loop")
    sub.add_parser("api", help="read API")
    sub.add_parser("intake", help="webhook intake only (no apply loop, no read API)")
    sub.add_parser("deliver", help="outbound call events only: fan-out and delivery (serve and worker run them too)")
    dlq = sub.add_parser("dlq", help="inspect and replay dead-lettered events")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_sub.add_parser("list", help="show dead-lettered events with their reason")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = dlq_sub.add_parser("replay", help="re-queue dead-lettered events (all, or --id ones)")
    replay.add_argument("--id", dest="ids", action="append", help="a dead-letter id from `dlq list`")
    pricing = sub.add_parser("pricing", help="usage price files (LEDGER_PRICING_FILE)")
    pricing_sub = pricing.add_subparsers(dest="pricing_command", required=True)
    check = pricing_sub.add_parser("check", help="validate a pricing file and print its table")
    check.add_argument("file", help="a YAML or JSON pricing file")
    sub.add_parser("reindex", help="(re)build the calls API's indexes from the records (safe while running)")
    layout = sub.add_parser("layout", help=f"show the store's layout; --upgrade moves it to layout {NEWEST_LAYOUT} "
                                           "(plain fields)")
    layout.add_argument("--upgrade", action="store_true",
                        help=f"move to layout {NEWEST_LAYOUT} once every connected process reads it")
    layout.add_argument("--force", action="store_true", help="with --upgrade: move whatever is connected")
    sub.add_parser("archive", help="one archive pass now: finalized calls past LEDGER_RETENTION_DAYS to the archive")
    return p


def _pricing_check(path: str, settings: Settings) -> int:
    """Print the table (exit 0), or every problem of an invalid file, one per line (exit 2)."""
    from call_ledger.core.pricing import PricingError, format_table
    from call_ledger.settings import load_pricing_file

    try:
        table = load_pricing_file(path, settings.currency, set(settings.fx_rates))
    except PricingError as exc:
        for problem in exc.problems:
            print(f"call-ledger: {path}: {problem}", file=sys.stderr)
        return 2
    print(format_table(table))
    print(f"{len(table)} price(s), ledger currency {settings.currency}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    commands = parser()
    args = commands.parse_args(argv)
    if args.command == "layout" and args.force and not args.upgrade:
        commands.error("--force moves the store: it goes with --upgrade")
    if args.command == "pricing":
        # The file named on the command line is checked, not LEDGER_PRICING_FILE; currency and
        # FX rates still come from the environment, as they would for the service.
        return _pricing_check(args.file, load_settings(pricing_file=None))
    settings = load_settings()
    output = configure_logging(settings.log_format, settings.log_level, secrets=secret_values(settings))
    try:
        if args.command == "dlq":
            return _run_command(settings, _dlq(args, settings))
        if args.command == "reindex":
            return _run_command(settings, _reindex(settings))
        if args.command == "layout":
            return _run_command(settings, _layout(args, settings))
        if args.command == "archive":
            return _run_command(settings, _archive(settings))
        run_service(args.command, settings)  # argparse limits it to serve | worker | api | intake | deliver
        return 0
    finally:
        output.flush()  # the lines of the last event-loop turn, whatever way the process leaves


if __name__ == "__main__":
    raise SystemExit(main())
