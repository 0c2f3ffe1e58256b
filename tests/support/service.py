"""The one harness for real `call-ledger` processes: start a role (or another Python command) as a
subprocess with an environment, wait until it answers, stop it (SIGTERM) or kill it (SIGKILL), and
read its log.

Output always goes to files, never to pipes: a pipe that nobody reads fills after some 64 KiB of log
lines (one per event) and then blocks the service mid-write, and the test would wait for a process
that is stuck on us.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from tests.support.paths import ROOT
from tests.support.redis_server import free_port
from tests.support.settings import API_TOKEN, PLATFORM_SECRET


def environment(env: Mapping[str, str] | None = None, *, inherit_ledger: bool = False) -> dict[str, str]:
    """This process's environment for a child: without its LEDGER_* variables unless `inherit_ledger`
    (a developer's own settings must not leak into a test's service), then `env` on top."""
    base = {k: v for k, v in os.environ.items() if inherit_ledger or not k.startswith("LEDGER_")}
    return {**base, **(env or {})}


def ledger_env(**env: str) -> dict[str, str]:
    """The variables every test service gets: the test token and signing secret, JSON logs."""
    return {"LEDGER_API_TOKENS": API_TOKEN, "LEDGER_PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET,
            "LEDGER_LOG_FORMAT": "json", **env}


class Stopped(NamedTuple):
    """How a service ended: its exit code, its stdout, and how long SIGTERM took to end it."""

    code: int
    output: str
    took: float


class Service:
    """One process with its stdout (and stderr, in its own file or with stdout) in files.

    `port` is the port it was told to listen on (LEDGER_PORT), 0 for a command that serves nothing."""

    def __init__(self, name: str, proc: "subprocess.Popen[bytes]", port: int, stdout: Path,
                 stderr: Path | None, own_dir: Path | None = None) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.stdout_path = stdout
        self.stderr_path = stderr
        self._own_dir = own_dir  # a temporary directory of its own, removed when it stops

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- alive and ready --------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"{self.name} exited {self.proc.returncode}: {self.tail()}"

    def answers(self, path: str = "/healthz") -> bool:
        """Whether `path` answers 200 now (a refused or slow connection is a no)."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=0.5) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def wait_started(self, path: str = "/healthz", timeout: float = 20.0) -> "Service":
        """Block until `path` answers 200; kill it and raise with its stderr if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if self.answers(path):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} did not start: {self.errors()[-2000:]}")

    def wait_exit_or_start(self, timeout: float = 20) -> int | None:
        """The exit code if the process stops by itself at start-up; None if it started serving."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            if self.answers():
                return None
            time.sleep(0.05)
        raise AssertionError(f"{self.name} neither exited nor started within {timeout} s")

    async def wait_ready(self, path: str = "/healthz", timeout: float = 20.0, interval: float = 0.05) -> None:
        """Poll `path` (without blocking the event loop) until it answers 200; fail with the log's tail
        if the process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                self.assert_alive()
                try:
                    async with session.get(self.url(path), timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                assert time.monotonic() < deadline, f"{self.name} not ready: {self.tail()}"
                await asyncio.sleep(interval)

    # -- ending it --------------------------------------------------------------------------------

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait for the exit code; SIGKILL (and raise) if it does not exit in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self, timeout: float = 20) -> Stopped:
        """SIGTERM, the exit code, everything it wrote to stdout, and how long it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        output = self.output()
        self._forget()
        return Stopped(self.proc.returncode, output, took)

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def _forget(self) -> None:
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    # -- its log ----------------------------------------------------------------------------------

    def output(self) -> str:
        """Everything it wrote to stdout (and stderr, when they share the file)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def errors(self) -> str:
        """What it wrote to stderr (its stdout file when they share it)."""
        path = self.stderr_path or self.stdout_path
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def lines(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """Its JSON log lines (those starting with `{`). A line cut short (the last one of a
        SIGKILLed process) is skipped, unless `strict`: then it fails the test."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    if strict:
                        raise
        return out

    def outcomes(self) -> dict[str, list[str]]:
        """A worker's log read back: entry id -> the outcomes it logged for it, in order."""
        seen: dict[str, list[str]] = {}
        for line in self.lines():
            if line.get("event") in ("event_applied", "event_not_applied"):
                seen.setdefault(line["entry_id"], []).append(line["outcome"])
        return seen


def start(role: str, env: Mapping[str, str], *, log_dir: Path | None = None, name: str | None = None,
          port: int | None = None, command: Sequence[str] | None = None, merge_stderr: bool = False,
          cwd: Path | None = ROOT) -> Service:
    """Start `python -m call_ledger.cli <role>` (or `command`) with exactly `env` (plus LEDGER_PORT
    when a port is given or taken here), its output in `log_dir` (a temporary directory of its own,
    removed at `stop()`, when None). Returns at once: wait with `wait_started`/`wait_ready`."""
    name = name or role
    own_dir = None if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"ledger-{name}-"))
    directory = log_dir or own_dir
    assert directory is not None
    if port is None:
        port = int(env["LEDGER_PORT"]) if "LEDGER_PORT" in env else free_port() if command is None else 0
    full_env = {**env, "LEDGER_PORT": str(port)} if port else dict(env)
    stdout = directory / (f"{name}.log" if merge_stderr else f"{name}-{port}.out")
    stderr = None if merge_stderr else directory / f"{name}-{port}.err"
    args = list(command) if command is not None else [sys.executable, "-m", "call_ledger.cli", role]
    with stdout.open("wb") as out:
        if stderr is None:
            proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        else:
            with stderr.open("wb") as err:
                proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out, stderr=err)
    return Service(name, proc, port, stdout, stderr, own_dir)


def start_service(role: str, **env: str) -> Service:
    """`call-ledger <role>` with this process's environment (its LEDGER_REDIS_URL only when given:
    without one, the role runs on its embedded store), the test token and secret, and logs in the
    format the process picks (`auto`); returns once /healthz answers."""
    environ = environment(inherit_ledger=True)
    if "LEDGER_REDIS_URL" not in env:
        environ.pop("LEDGER_REDIS_URL", None)
    service = start(role, {**environ, **ledger_env(LEDGER_LOG_FORMAT="auto"), **env})
    return service.wait_started(timeout=15)


def stop(service: Service) -> Stopped:
    """SIGTERM → (exit code, stdout, seconds it took)."""
    return service.stop()
