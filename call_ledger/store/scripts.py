"""Lua scripts run by SHA in pipelines, without redis-py's per-pipeline SCRIPT EXISTS.

redis-py checks every script of a pipeline with a SCRIPT EXISTS before running it: one more
round trip per pipeline, on the apply loop's every batch and on every list page. Here a
pipeline sends EVALSHA only; when the server answers NOSCRIPT (a restart, SCRIPT FLUSH, a
node that never saw it) the scripts are loaded and the pipeline is built and sent again.
Only pipelines that may run twice use this: index updates (version-guarded, idempotent)
and reads.

On a Redis Cluster too: redis-py's cluster pipeline refuses `evalsha()`, so EVALSHA goes as a
plain command (routed by its first key); SCRIPT LOAD there reaches every primary.
"""

import hashlib
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from redis.exceptions import NoScriptError


class Lua:
    def __init__(self, name: str) -> None:
        self.source = files("call_ledger.store").joinpath("lua", name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def queue(self, pipe: Any, keys: list[str], args: list[Any]) -> None:
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def run(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        """One call by SHA, alone (no pipeline); on NOSCRIPT the script is loaded and the call sent
        again (only for scripts that may run twice: it did not run the first time)."""
        try:
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


async def run_pipeline(redis: Any, build: Callable[[Any], None], scripts: tuple[Lua, ...]) -> list[Any]:
    """Build a pipeline with `build(pipe)` and run it; on NOSCRIPT load `scripts`, run it again."""
    pipe = redis.pipeline(transaction=False)
    build(pipe)
    try:
        return list(await pipe.execute())
    except NoScriptError:
        for script in scripts:
            await redis.script_load(script.source)
        pipe = redis.pipeline(transaction=False)
        build(pipe)
        return list(await pipe.execute())
