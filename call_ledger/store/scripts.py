"""The one way call-ledger runs its Lua scripts (each in a file under call_ledger/store/lua/).

By SHA (`queue` in a pipeline, `run` alone), loading the script on NOSCRIPT; or by source
(`eval`, `eval_command`) where a script runs rarely or inside intake's batched pipeline, whose
replies are handed to callers as they are (a NOSCRIPT there would reach a webhook).

By SHA in pipelines, without redis-py's per-pipeline SCRIPT EXISTS.

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
    """One script of call_ledger/store/lua/. Keys always go in KEYS (call_ledger.store.keys names them).
    `include`: files of local functions it shares with other scripts, put before it (Redis runs one
    source per script: it has no `require`)."""

    def __init__(self, name: str, include: tuple[str, ...] = ()) -> None:
        lua = files("call_ledger.store").joinpath("lua")
        self.source = "".join(lua.joinpath(part).read_text() for part in (*include, name))
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

    def eval_command(self, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        """The EVAL command (the source, not the SHA) as arguments, for a caller that sends it itself."""
        return ("EVAL", self.source, len(keys), *keys, *args)

    async def eval(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        """One call by source (EVAL): for a script run too rarely to keep loaded."""
        return await redis.eval(self.source, len(keys), *keys, *args)


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
