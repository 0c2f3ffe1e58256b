"""The deliveries' scripts (call_ledger.store.deliveries) on fake Redis: enqueue at most once, a claim's
lease, a settle that lost its lease, recover, the attempts log, retention, drop."""

import fakeredis
import orjson
import pytest

from call_ledger.core.outbound import OutboxMessage
from call_ledger.store import Store
from call_ledger.store.deliveries import Enqueue, Outcome

EP = "ep_0123456789abcdef01234567"
T0 = 1_765_000_000_000


def message(n: int = 1, created_ms: int = T0) -> OutboxMessage:
    return OutboxMessage(id=f"msg_{n:032x}", type="call.ended", revision=0, call_sid=f"CA{n}", created_ms=created_ms,
                         organization_id=None, record=b'{"id":"rec","cost":"0.01"}')


@pytest.fixture
def store(fake_redis: fakeredis.FakeAsyncRedis) -> Store:
    return Store(fake_redis)


async def test_enqueue_is_once_per_endpoint_and_message(store: Store) -> None:
    assert await store.deliveries.enqueue(EP, message(), T0)
    assert not await store.deliveries.enqueue(EP, message(), T0 + 5)
    assert await store.deliveries.enqueue_all([Enqueue(EP, message()), Enqueue(EP, message(2)),
                                               Enqueue("ep_other", message())], T0) == 2
    claimed = await store.deliveries.claim(EP, T0, 10, 20_000)
    assert [d.message_id for d in claimed.deliveries] == [message().id, message(2).id]
    assert claimed.deliveries[0].body == message().body()  # the bytes sent are the message's, exactly


async def test_a_claim_leases_the_message_and_a_late_settle_counts_for_nothing(store: Store) -> None:
    await store.deliveries.enqueue(EP, message(), T0)
    first = (await store.deliveries.claim(EP, T0, 4, 20_000)).deliveries[0]
    during = await store.deliveries.claim(EP, T0 + 19_999, 4, 20_000)
    assert during.deliveries == [] and during.next_due_ms == T0 + 20_000
    second = (await store.deliveries.claim(EP, T0 + 20_000, 4, 20_000)).deliveries[0]  # the lease ran out
    assert second.attempts == 0 and second.lease_ms == T0 + 40_000
    assert not await store.deliveries.settle(first, Outcome(1, "delivered", None, T0 + 21_000, 200))
    assert await store.deliveries.settle(second, Outcome(1, "pending", T0 + 30_000, T0 + 21_000, 500))
    assert (await store.deliveries.claim(EP, T0 + 29_999, 4, 20_000)).deliveries == []
    third = (await store.deliveries.claim(EP, T0 + 30_000, 4, 20_000)).deliveries[0]
    assert third.attempts == 1
    assert await store.deliveries.settle(third, Outcome(2, "delivered", None, T0 + 31_000, 204))
    assert (await store.deliveries.claim(EP, T0 + 10**9, 4, 20_000)) .next_due_ms is None
    stats = await store.deliveries.pending_stats([EP], T0 + 40_000)
    assert stats[EP].count == 0 and stats[EP].oldest_age_s == 0


async def test_attempts_are_listed_newest_first_in_pages(store: Store) -> None:
    await store.deliveries.enqueue(EP, message(), T0)
    for attempt in (1, 2, 3):
        d = (await store.deliveries.claim(EP, T0 + attempt * 100_000, 1, 20_000)).deliveries[0]
        state = "failed" if attempt == 3 else "pending"
        next_ms = None if attempt == 3 else T0 + (attempt + 1) * 100_000
        await store.deliveries.settle(d, Outcome(attempt, state, next_ms, T0 + attempt * 100_000, None, "timeout"))
    page = await store.deliveries.attempts(EP, None, 2)
    assert [a["attempt"] for a in page.attempts] == [3, 2] and page.next is not None
    assert page.attempts[0] == {"message_id": message().id, "type": "call.ended", "call_sid": "CA1", "attempt": 3,
                                "status_code": None, "error": "timeout", "at": "2025-12-06T05:51:40Z",
                                "next_attempt_at": None}
    rest = await store.deliveries.attempts(EP, page.next, 2)
    assert [a["attempt"] for a in rest.attempts] == [1] and rest.next is None


async def test_recover_sends_kept_messages_again_with_their_attempts(store: Store) -> None:
    for n, created in ((1, T0), (2, T0 + 1000), (3, T0 + 2000)):
        await store.deliveries.enqueue(EP, message(n, created), T0 + 2000)
    for d in (await store.deliveries.claim(EP, T0 + 2000, 3, 20_000)).deliveries:
        await store.deliveries.settle(d, Outcome(1, "delivered" if d.call_sid != "CA3" else "failed", None,
                                                 T0 + 3000, 200))
    assert (await store.deliveries.claim(EP, T0 + 10**7, 3, 20_000)).deliveries == []
    assert await store.deliveries.recover(EP, T0 + 1000, T0 + 5000) == 2
    again = (await store.deliveries.claim(EP, T0 + 5000, 3, 20_000)).deliveries
    assert sorted((d.message_id, d.attempts) for d in again) == [(message(2).id, 1), (message(3).id, 1)]
    # Being sent right now (leased): recover leaves it to that attempt, nobody else claims it.
    assert await store.deliveries.recover(EP, T0, T0 + 6000) == 3
    assert [d.message_id for d in (await store.deliveries.claim(EP, T0 + 6000, 3, 20_000)).deliveries] == [
        message(1).id]


async def test_recover_goes_a_page_per_script_and_reaches_every_message(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # However many messages an endpoint keeps, no one script holds Redis for them all.
    from call_ledger.store import deliveries

    pages: list[int] = []
    run = deliveries.RECOVER.run

    async def counting(redis: object, keys: list[str], args: list[object]) -> object:
        pages.append(int(str(args[2])))
        return await run(redis, keys, args)

    monkeypatch.setattr(deliveries, "RECOVER_PAGE", 2)
    monkeypatch.setattr(deliveries.RECOVER, "run", counting)
    for n in range(1, 6):
        await store.deliveries.enqueue(EP, message(n, T0 + n), T0 + 10)
    for d in (await store.deliveries.claim(EP, T0 + 10, 5, 20_000)).deliveries:
        await store.deliveries.settle(d, Outcome(1, "failed", None, T0 + 20, 500))
    assert await store.deliveries.recover(EP, T0, T0 + 10**6) == 5
    assert pages == [0, 2, 4]  # offsets of three pages of at most two
    assert len((await store.deliveries.claim(EP, T0 + 10**6, 10, 20_000)).deliveries) == 5


@pytest.mark.parametrize("cursor", ["0-0", "18446744073709551616-0", "1-18446744073709551616", "x-1"])
async def test_an_attempts_cursor_redis_never_gave_out_is_refused_as_such(store: Store, cursor: str) -> None:
    if cursor == "0-0":
        assert (await store.deliveries.attempts(EP, cursor, 10)).attempts == []
        return
    with pytest.raises(ValueError, match="not a cursor"):
        await store.deliveries.attempts(EP, cursor, 10)


async def test_trim_drops_only_settled_messages_past_retention_and_drop_forgets_all(
        store: Store, fake_redis: fakeredis.FakeAsyncRedis) -> None:
    await store.deliveries.enqueue(EP, message(1, T0), T0)
    await store.deliveries.enqueue(EP, message(2, T0), T0)
    d = (await store.deliveries.claim(EP, T0, 1, 20_000)).deliveries[0]
    await store.deliveries.settle(d, Outcome(1, "delivered", None, T0, 200))
    assert await store.deliveries.trim([EP], 7, T0 + 7 * 86_400_000 + 1) == 1
    kept = await fake_redis.hgetall(store.keys.delivery_messages(EP))
    assert list(kept) == [message(2).id.encode()] and orjson.loads(kept[message(2).id.encode()])["state"] == "pending"
    await store.deliveries.drop(EP)
    assert await fake_redis.keys("*") == []
