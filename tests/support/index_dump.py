"""Every index key's content, to compare the indexes of two stores (a live one and one rebuilt once
from the final records)."""

from typing import Any


async def dump_indexes(redis: Any) -> dict[bytes, Any]:
    """Every index key's content, comparable across two stores."""
    out: dict[bytes, Any] = {}
    for key in await redis.keys("cl:ix:*"):
        kind = await redis.type(key)
        if kind == b"zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            out[key] = await redis.hgetall(key)
    return out
