"""Replays with moved name/value boundaries: Twilio and Plivo sign `name1 value1 name2 value2 …` with no
separator, so a captured request re-split keeps its valid signature. The re-splits of a request, the
providers' own verifiers, the signed requests, and the settings with every URL-signed source configured."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict
from plivo.utils.signature_v3 import validate_v3_signature
from redis.exceptions import ConnectionError as RedisConnectionError
from twilio.request_validator import RequestValidator

from call_ledger.settings import Settings
from call_ledger.store import Store
from tests.support import payloads_plivo as pl
from tests.support import payloads_twilio as tw
from tests.support.settings import make_settings

PUBLIC_URL = tw.PUBLIC_URL
assert pl.PUBLIC_URL == PUBLIC_URL
Params = list[tuple[str, str]]


def resplit_settings() -> Settings:
    """Every URL-signed source configured behind LEDGER_PUBLIC_URL."""
    return make_settings(twilio_auth_token=tw.AUTH_TOKEN, plivo_auth_token=pl.AUTH_TOKEN, public_url=PUBLIC_URL)


def signed_text(params: Params) -> str:
    """What both providers concatenate for a POST: `name + value`, sorted by name then value."""
    return "".join(n + v for n, v in sorted(params))


def resplits(params: Params) -> Iterator[tuple[str, Params]]:
    """Every single re-split that keeps the signed text (and so the signature), with a label."""
    ordered = sorted(params)
    original = signed_text(ordered)
    candidates: list[tuple[str, Params]] = []
    for i in range(len(ordered) - 1):  # pair i absorbs pair i+1
        (n1, v1), (n2, v2) = ordered[i], ordered[i + 1]
        candidates.append((f"{n1}+{n2}", [*ordered[:i], (n1, v1 + n2 + v2), *ordered[i + 2:]]))
    for i, (name, value) in enumerate(ordered):  # the boundary inside one pair moved by 1..n either way
        text = name + value
        for cut in range(1, len(text) + 1):
            if cut != len(name):
                label = f"{text[:cut]}={text[cut:]}"[:60]
                candidates.append((label, [*ordered[:i], (text[:cut], text[cut:]), *ordered[i + 1:]]))
    for label, candidate in candidates:
        if signed_text(candidate) == original:  # a name cut too far left sorts elsewhere: not an attack
            yield label, candidate


def twilio_verifies(params: Params, signature: str) -> bool:
    return RequestValidator(tw.AUTH_TOKEN).validate(PUBLIC_URL + tw.PATH, MultiDict(params), signature)


def plivo_verifies(params: Params, signature: str) -> bool:
    grouped: dict[str, Any] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    flat = {n: v[0] if len(v) == 1 else v for n, v in grouped.items()}
    return bool(validate_v3_signature("POST", PUBLIC_URL + pl.PATH, pl.NONCE, pl.AUTH_TOKEN, signature, flat))


PROVIDERS = {
    # The completed callback: sequenced (SequenceNumber 3), CallDuration 300.
    "twilio": (tw.PATH, tw.CALL_SID, tw.completed(), "X-Twilio-Signature", twilio_verifies),
    # The hang-up: Event=Hangup, TotalCost 0.04250: the one the attacker charged four times.
    "plivo": (pl.PATH, pl.CALL_UUID, pl.hangup(), "X-Plivo-Signature-V3", plivo_verifies),
}


def sign(provider: str, params: Params) -> dict[str, str]:
    if provider == "twilio":
        return tw.TwilioSigner().sign("POST", PUBLIC_URL + tw.PATH, params).headers
    return pl.PlivoSigner().sign("POST", PUBLIC_URL + pl.PATH, params).headers


async def post(client: Any, path: str, headers: dict[str, str], params: Params) -> Any:
    return await client.post(path, data=urlencode(params).encode(), headers=headers)


async def post_while_redis_is_down(client: Any, store: Store, monkeypatch: pytest.MonkeyPatch, path: str,
                                   headers: dict[str, str], params: Params) -> int:
    """POST while the one-server claim-and-XADD script cannot reach Redis; the answer's status."""
    original = store.batcher.claim_and_xadd

    async def down(*_args: Any) -> Any:
        raise RedisConnectionError("redis went away")

    monkeypatch.setattr(store.batcher, "claim_and_xadd", down)
    try:
        return int((await post(client, path, headers, params)).status)
    finally:
        monkeypatch.setattr(store.batcher, "claim_and_xadd", original)
