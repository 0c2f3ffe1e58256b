"""`call-ledger archive` as a real process on a real redis-server, killed with SIGKILL at each step of a
pass in turn, on a directory and on an S3-compatible server (moto's); and a pass on a Redis Cluster.

After each kill, and after the run that finishes: no call in two rows; every call whole in Redis or
tombstoned with its row, never neither, and served as before (SPEC §16, docs/archive.md).
"""

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from call_ledger.archive import open_archive
from call_ledger.settings import Settings
from call_ledger.store import Store, open_redis
from call_ledger.web.metrics import Metrics
from call_ledger.worker.archive import Archiver
from tests.support.archiving import SIDS, archived_rows_in, check_never_lost, fill_calls, served_now
from tests.support.paths import ROOT
from tests.support.redis_server import RedisServer
from tests.support.s3 import S3, aws_environment, moto_endpoint, s3
from tests.support.settings import make_settings

__all__ = ["aws_environment", "moto_endpoint", "s3"]  # fixtures

pytestmark = pytest.mark.real_redis

# Each run is killed at the next of these (step, nth time reached), then one run finishes. Batches of 10 calls
# (23 calls: three batches): the first batch is killed held, halfway through its files, after its tombstones;
# the second placed, with its files written, after leaving the indexes; the last run does the third whole.
KILLS = [("held", 1), ("file_written", 2), ("tombstoned", 1), ("placed", 1), ("files_written", 1), ("unindexed", 1)]


def archive_process(redis_url: str, archive_url: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_REDIS_URL=redis_url, LEDGER_ARCHIVE_URL=archive_url, LEDGER_RETENTION_DAYS="0",
               LEDGER_LOG_FORMAT="json", ARCHIVE_BATCH="10")
    if kill_at:
        env["ARCHIVE_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "tests/support/archive_process.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
async def filled(redis_server: RedisServer) -> AsyncIterator[tuple[Store, Settings]]:
    settings = make_settings(redis_url=redis_server.url, retention_days=0)
    store = Store(open_redis(settings), settings.key_prefix)
    await fill_calls(store, settings)
    yield store, settings
    await store.close()


async def kill_at_every_step(store: Store, settings: Settings, url: str, redis_url: str) -> None:
    files = open_archive(url)
    served = {sid: await served_now(store, settings, files, sid) or b"" for sid in SIDS}
    for step, nth in KILLS:
        killed = archive_process(redis_url, url, f"{step}:{nth}")
        assert killed.returncode == -9, (killed.stdout[-3000:], killed.stderr[-2000:])
        await check_never_lost(store, settings, files, served, done=False)
        await store.redis.delete(store.keys.archive_lock)  # its lease would run out: a minute

    finished = archive_process(redis_url, url)

    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = finished.stdout.strip().splitlines()[-1]  # after the JSON log lines
    assert summary.startswith("archived ") and "call(s)" in summary, finished.stdout[-2000:]
    await check_never_lost(store, settings, files, served, done=True)
    assert not await store.redis.exists(store.keys.archive_pass, store.keys.archive_batch, store.keys.archive_lock)


async def test_sigkill_at_every_step_of_a_pass_into_a_directory(
        filled: tuple[Store, Settings], redis_server: RedisServer, tmp_path: Path) -> None:
    store, settings = filled
    await kill_at_every_step(store, settings, str(tmp_path / "archive"), redis_server.url)
    assert not list((tmp_path / "archive").rglob("*.tmp")), "a file written aside was left"


async def test_sigkill_at_every_step_of_a_pass_into_s3(
        filled: tuple[Store, Settings], redis_server: RedisServer, s3: S3) -> None:
    store, settings = filled
    await kill_at_every_step(store, settings, s3.url(), redis_server.url)
    keys = [item["Key"] for item in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert all(key.startswith("archive/calls/organization_id=") or key.startswith("archive/events/organization_id=")
               for key in keys)


async def test_a_pass_on_a_redis_cluster(cluster_url: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url=cluster_url, redis_cluster=True, retention_days=0)
    store = Store(open_redis(settings), settings.key_prefix)
    try:
        await fill_calls(store, settings)
        files = open_archive(str(tmp_path))
        served = {sid: await served_now(store, settings, files, sid) or b"" for sid in SIDS}
        report = await Archiver(store, settings, files, Metrics(), batch=10).run_pass()
        assert report is not None and report.calls == len(SIDS)
        await check_never_lost(store, settings, files, served, done=True)
        assert len(archived_rows_in(files, "events")) == 4 * len(SIDS) + sum(1 for i in range(len(SIDS)) if i % 3)
    finally:
        await store.close()


def test_the_command_says_in_one_line_what_is_wrong(tmp_path: Path) -> None:
    from tests.support.cli import run_cli

    unset = run_cli("archive", LEDGER_REDIS_URL="redis://127.0.0.1:1/0")
    assert (unset.returncode, unset.stderr.strip()) == (2, "call-ledger: archive needs LEDGER_ARCHIVE_URL")
    scheme = run_cli("archive", LEDGER_REDIS_URL="redis://127.0.0.1:1/0", LEDGER_ARCHIVE_URL="ftp://host/x")
    assert scheme.returncode == 2 and len(scheme.stderr.strip().splitlines()) == 1
    assert "LEDGER_ARCHIVE_URL" in scheme.stderr and "ftp://" in scheme.stderr
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    unwritable = run_cli("archive", LEDGER_REDIS_URL="redis://127.0.0.1:1/0", LEDGER_ARCHIVE_URL=str(blocked))
    assert unwritable.returncode == 2 and len(unwritable.stderr.strip().splitlines()) == 1, unwritable.stderr
    assert unwritable.stderr.startswith("call-ledger: archive: ")


def test_the_command_without_s3_credentials_says_so_without_a_secret(
        tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.cli import run_cli

    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    found = run_cli("archive", LEDGER_REDIS_URL="redis://127.0.0.1:1/0", LEDGER_ARCHIVE_URL="s3://bucket/x")
    assert found.returncode == 2 and len(found.stderr.strip().splitlines()) == 1, found.stderr
    assert "credentials" in found.stderr
