"""Whole provider calls over HTTP on fake Redis: shuffled, redelivered, POST or GET → one exact record.

Each provider's payload module gives a whole call and signs it with the provider's own SDK (or its
documented recipe). Every request is posted through the real intake routes, the worker runs in burst
mode, and the record is read back through `GET /api/v1/calls/sid/{sid}`. The expected records are
worked out by hand from those payloads and SPEC §5 (never computed by the code under test); money is
read back as `Decimal`, so a float-rounded amount cannot pass for an exact one.
"""

import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import partial

import pytest

from tests.support import payloads_telnyx as tx
from tests.support import payloads_twilio as tw
from tests.support import payloads_vonage as vn
from tests.support.provider_calls import (
    StartLedger,
    WholeCall,
    attributed_twilio_call,
    platform,
    plivo_call,
    record_of,
    redelivered_and_shuffled,
    telnyx_call,
    twilio_call,
    vonage_call,
)

# -- each provider, whole call, shuffled and redelivered ---------------------------------------------------

@pytest.mark.parametrize(("direction", "method", "telephony"), [
    ("outbound-api", "POST", Decimal("0.07")),  # ceil(300 / 60) = 5 minutes x 0.014
    ("inbound", "POST", Decimal("0.0425")),  # 5 minutes x 0.0085
    ("outbound-dial", "GET", Decimal("0.07")),
])
async def test_twilio_whole_call_shuffled_and_redelivered_gives_the_exact_record(
        start_ledger: StartLedger, direction: str, method: str, telephony: Decimal) -> None:
    record = await record_of(start_ledger, twilio_call(direction, method), seed=11)

    assert record == {
        "call_sid": "CA5b2f0e6a9c1d4e8f7a3b2c1d0e9f8a7b",
        "to_phone_number": "+15551234567",  # ours: the number dialled (inbound) or the caller id (outbound)
        "customer_phone_number": "+15559876543",
        "id": 1,
        "assistant_id": 0,
        "status": "completed",
        "call_meta": {},
        "assistant_name": None,
        "flow_name": None,
        "duration": 300,
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:05:06Z",
        "total_cost": telephony,
        "llm_cost": None,
        "tts_cost": None,
        "stt_cost": None,
        "telephony_cost": telephony,
        "cost_currency": "USD",
    }


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
async def test_telnyx_whole_call_shuffled_and_redelivered_gives_the_exact_record(
        start_ledger: StartLedger, direction: str) -> None:
    record = await record_of(start_ledger, telnyx_call(direction), seed=12)

    assert record == {
        "call_sid": "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "to_phone_number": "+15551234567",
        "customer_phone_number": "+15559876543",
        "id": 1,
        "assistant_id": 0,
        "status": "completed",
        "call_meta": {},
        "assistant_name": None,
        "flow_name": None,
        # No duration field: hang-up 10:05:03.998877 - answer 10:00:03.250000 = 300.748877 s → 301.
        "duration": 301,
        "started_at": "2026-11-24T10:00:00.521992Z",
        "ended_at": "2026-11-24T10:05:03.998877Z",
        "total_cost": Decimal("0.033"),
        "llm_cost": None,
        "tts_cost": None,
        "stt_cost": None,
        "telephony_cost": Decimal("0.033"),  # call.cost total_cost "0.0330", parts in USD
        "cost_currency": "USD",
    }


@pytest.mark.parametrize(("direction", "method", "fx_rates", "telephony"), [
    ("outbound", "POST", "EUR=1.10", Decimal("0.02475")),  # 0.0225 EUR x 1.10
    # 22_500_000 nano x 1.0812345678 = 24_327_777.7755 → rounded half-even to 24_327_778 nano.
    ("inbound", "POST", "EUR=1.0812345678", Decimal("0.024327778")),
    ("outbound", "GET", "EUR=1.10", Decimal("0.02475")),
])
async def test_vonage_whole_call_shuffled_and_redelivered_gives_the_exact_record(
        start_ledger: StartLedger, direction: str, method: str, fx_rates: str, telephony: Decimal) -> None:
    record = await record_of(start_ledger, vonage_call(direction, method, fx_rates), seed=13)

    assert record == {
        "call_sid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
        "to_phone_number": "+447700900001",  # Vonage's bare digits, in E.164
        "customer_phone_number": "+447700900000",
        "id": 1,
        "assistant_id": 0,
        "status": "completed",
        "call_meta": {},
        "assistant_name": None,
        "flow_name": None,
        "duration": 300,
        "started_at": "2026-11-24T10:00:00.123Z",
        "ended_at": "2026-11-24T10:05:06.012Z",
        "total_cost": telephony,
        "llm_cost": None,
        "tts_cost": None,
        "stt_cost": None,
        "telephony_cost": telephony,
        "cost_currency": "USD",
    }


@pytest.mark.parametrize(("direction", "method"), [("outbound", "POST"), ("inbound", "GET")])
async def test_plivo_whole_call_shuffled_and_redelivered_gives_the_exact_record(
        start_ledger: StartLedger, direction: str, method: str) -> None:
    record = await record_of(start_ledger, plivo_call(direction, method), seed=14)

    assert record == {
        "call_sid": "2b1f6c1e-8a3d-4f5e-9c7b-6d2e1f0a9b8c",
        "to_phone_number": "+14155551234",  # Plivo's bare digits, in E.164
        "customer_phone_number": "+447700900123",
        "id": 1,
        "assistant_id": 0,
        "status": "completed",
        "call_meta": {},
        "assistant_name": None,
        "flow_name": None,
        "duration": 287,  # Duration (connected), not BillDuration (300)
        # The hangup says the call started at StartTime 2026-11-24 10:00:00; the ring and answer callbacks
        # carry no time of their own and arrive (here) a day later, so they cannot be the call's first sign.
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:04:52Z",  # EndTime
        "total_cost": Decimal("0.0425"),
        "llm_cost": None,
        "tts_cost": None,
        "stt_cost": None,
        "telephony_cost": Decimal("0.0425"),  # TotalCost "0.04250", LEDGER_PLIVO_CURRENCY USD
        "cost_currency": "USD",
    }


# -- order independence ------------------------------------------------------------------------------------

@pytest.mark.parametrize("whole_call", [
    partial(twilio_call, "inbound"),
    partial(twilio_call, "outbound-api", "GET"),
    partial(telnyx_call, "outgoing"),
    partial(vonage_call, "inbound", "POST", "EUR=1.0812345678"),
    partial(vonage_call, "outbound", "GET"),
    partial(plivo_call, "outbound"),
    partial(plivo_call, "inbound", "GET"),
], ids=["twilio-inbound", "twilio-get", "telnyx", "vonage-inbound", "vonage-get", "plivo", "plivo-get"])
async def test_same_call_in_another_order_into_a_fresh_store_gives_an_identical_body(
        start_ledger: StartLedger, whole_call: Callable[[], WholeCall]) -> None:
    bodies = []
    for seed in (101, 202):
        call = whole_call()
        ledger = await start_ledger(**call.settings)
        await ledger.deliver(redelivered_and_shuffled(call.sends, seed))
        bodies.append(await ledger.record_body(call.call_sid))

    assert bodies[0] == bodies[1]
    assert json.loads(bodies[0])["status"] == "completed"


# -- /events -----------------------------------------------------------------------------------------------

def _telnyx_id(kind: str) -> str:
    """The payload module derives Telnyx event ids from the call id (uuid5), so several calls can coexist."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"telnyx/{tx.CALL_CONTROL_ID}/{kind}"))


EVENTS_OLDEST_FIRST = {
    "twilio": (twilio_call, [
        ("twilio", f"{tw.CALL_SID}:0", "status.initiated"),
        ("twilio", f"{tw.CALL_SID}:1", "status.ringing"),
        ("twilio", f"{tw.CALL_SID}:2", "status.in-progress"),
        ("twilio", f"{tw.CALL_SID}:3", "status.completed"),
    ]),
    "telnyx": (telnyx_call, [  # call.speak.ended is acknowledged, never stored
        ("telnyx", _telnyx_id("initiated"), "call.initiated"),
        ("telnyx", _telnyx_id("answered"), "call.answered"),
        ("telnyx", _telnyx_id("hangup"), "call.hangup"),
        ("telnyx", _telnyx_id("cost"), "call.cost"),
    ]),
    "vonage": (vonage_call, [  # human and record are acknowledged, never stored
        ("vonage", f"{vn.CALL_UUID}:started:2026-11-24T10:00:00.123Z", "started"),
        ("vonage", f"{vn.CALL_UUID}:ringing:2026-11-24T10:00:01.456Z", "ringing"),
        ("vonage", f"{vn.CALL_UUID}:answered:2026-11-24T10:00:05.789Z", "answered"),
        ("vonage", f"{vn.CALL_UUID}:completed:2026-11-24T10:05:06.012Z", "completed"),
    ]),
}


@pytest.mark.parametrize(("whole_call", "expected"), EVENTS_OLDEST_FIRST.values(), ids=EVENTS_OLDEST_FIRST.keys())
async def test_events_route_lists_each_distinct_provider_event_once_oldest_first(
        start_ledger: StartLedger, whole_call: Callable[[], WholeCall], expected: list[tuple[str, str, str]]) -> None:
    call = whole_call()
    ledger = await start_ledger(**call.settings)
    await ledger.deliver(redelivered_and_shuffled(call.sends, seed=15))

    assert await ledger.events(call.call_sid) == expected


# -- provider and platform events on one call --------------------------------------------------------------

async def test_provider_and_platform_events_combine_into_one_record_with_exact_costs(
        start_ledger: StartLedger) -> None:
    call = attributed_twilio_call()
    ledger = await start_ledger(**call.settings)
    await ledger.deliver(redelivered_and_shuffled(call.sends, seed=16))

    assert await ledger.record(call.call_sid) == {
        "call_sid": "CA5b2f0e6a9c1d4e8f7a3b2c1d0e9f8a7b",
        "to_phone_number": "+15551234567",  # from Twilio's From/To: the platform sent no numbers
        "customer_phone_number": "+15559876543",
        "id": 1,
        "assistant_id": 12,
        "status": "completed",
        # Merged key by key, the later metadata event winning "campaign".
        "call_meta": {"campaign": "winback", "customer_id": "cust_abc123", "language": "fr"},
        "assistant_name": "ServiceBot",
        "flow_name": "Retention",
        "duration": 300,
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:05:06Z",
        "total_cost": Decimal("0.2621"),  # 0.2123 + 0.0042 + 0.0031 + 0.0425
        "llm_cost": Decimal("0.2123"),  # 0.0123 + 0.2
        "tts_cost": Decimal("0.0042"),
        "stt_cost": Decimal("0.0031"),  # no currency: the ledger's
        "telephony_cost": Decimal("0.0425"),  # rate-card estimate: 5 minutes x twilio:inbound 0.0085
        "cost_currency": "USD",
    }


async def test_events_route_lists_provider_and_platform_events_once_oldest_first(
        start_ledger: StartLedger) -> None:
    call = attributed_twilio_call()
    ledger = await start_ledger(**call.settings)
    await ledger.deliver(redelivered_and_shuffled(call.sends, seed=17))

    assert await ledger.events(call.call_sid) == [
        ("twilio", f"{tw.CALL_SID}:0", "status.initiated"),  # 10:00:00
        ("twilio", f"{tw.CALL_SID}:1", "status.ringing"),  # 10:00:01
        ("platform", "msg_meta_1", "call.metadata"),  # 10:00:02
        ("twilio", f"{tw.CALL_SID}:2", "status.in-progress"),  # 10:00:06
        ("platform", "msg_llm_1", "call.usage"),  # 10:02:00
        ("platform", "msg_llm_2", "call.usage"),  # 10:03:00
        ("platform", "msg_meta_2", "call.metadata"),  # 10:04:30
        ("platform", "msg_tts", "call.usage"),  # 10:05:00
        ("platform", "msg_stt", "call.usage"),  # 10:05:01
        ("twilio", f"{tw.CALL_SID}:3", "status.completed"),  # 10:05:06
    ]


async def test_price_the_platform_forwards_replaces_the_rate_card_estimate(start_ledger: StartLedger) -> None:
    call = twilio_call("outbound-api")
    sends = [
        *call.sends,
        # Twilio's price, negative as its Call resource writes it, forwarded after the hang-up.
        platform("call.usage", "2026-11-24T10:05:40Z", {"component": "telephony", "cost": "-0.01300",
                                                         "currency": "USD"}, "msg_price"),
        platform("call.usage", "2026-11-24T10:05:00Z", {"component": "tts", "cost": "0.0100", "currency": "EUR"},
                 "msg_tts_eur"),
    ]
    ledger = await start_ledger(**call.settings, fx_rates="EUR=1.10")
    await ledger.deliver(redelivered_and_shuffled(sends, seed=18))

    assert await ledger.record(call.call_sid) == {
        "call_sid": "CA5b2f0e6a9c1d4e8f7a3b2c1d0e9f8a7b",
        "to_phone_number": "+15551234567",
        "customer_phone_number": "+15559876543",
        "id": 1,
        "assistant_id": 0,
        "status": "completed",
        "call_meta": {},
        "assistant_name": None,
        "flow_name": None,
        "duration": 300,
        "started_at": "2026-11-24T10:00:00Z",
        "ended_at": "2026-11-24T10:05:06Z",
        "total_cost": Decimal("0.024"),  # 0.013 + 0.011
        "llm_cost": None,
        "tts_cost": Decimal("0.011"),  # 0.0100 EUR x 1.10
        "stt_cost": None,
        "telephony_cost": Decimal("0.013"),  # reported, so not the estimate 5 x 0.014 = 0.07
        "cost_currency": "USD",
    }


async def test_money_is_written_as_exact_decimal_literals(start_ledger: StartLedger) -> None:
    call = attributed_twilio_call()
    ledger = await start_ledger(**call.settings)
    await ledger.deliver(redelivered_and_shuffled(call.sends, seed=19))

    body = await ledger.record_body(call.call_sid)
    for literal in (b'"total_cost":0.2621', b'"llm_cost":0.2123', b'"tts_cost":0.0042', b'"stt_cost":0.0031',
                    b'"telephony_cost":0.0425'):
        assert literal in body
