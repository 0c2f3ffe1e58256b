"""Commands packed by hiredis (call_ledger/store/wire.py) are the bytes redis-py's own packer writes."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from call_ledger.store.wire import FastConnection, pack_command

ARGS = st.lists(st.one_of(
    st.text(), st.binary(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=-1e300, max_value=1e300)), max_size=12)
NAMES = st.sampled_from(["SET", "EVALSHA", "SCRIPT LOAD", "XINFO GROUPS", b"HSET", b"CLIENT SETNAME"])


@given(NAMES, ARGS)
def test_packing_equals_redis_pys(name: Any, args: list[Any]) -> None:
    text_only = [a for a in args if not (isinstance(a, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in a))]
    expected = b"".join(Connection().pack_command(name, *text_only))
    assert b"".join(pack_command(name, *text_only)) == expected
    assert b"".join(FastConnection().pack_command(name, *text_only)) == expected


@given(st.lists(st.tuples(NAMES, ARGS), max_size=6))
def test_pipeline_packing_equals_redis_pys(commands: list[tuple[Any, list[Any]]]) -> None:
    packed = [(name, *[a for a in args if not (isinstance(a, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in a))])
              for name, args in commands]
    expected = b"".join(bytes(chunk) for chunk in Connection().pack_commands(packed))
    assert b"".join(FastConnection().pack_commands(packed)) == expected


def test_memoryviews_are_packed_as_their_bytes() -> None:
    assert pack_command("SET", "k", memoryview(b"value")) == [b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"]


def test_the_services_client_uses_it() -> None:
    from call_ledger.store import open_redis
    from tests.support.settings import make_settings

    client = open_redis(make_settings(redis_url="redis://127.0.0.1:1/0"))
    assert client.connection_pool.connection_class is FastConnection
