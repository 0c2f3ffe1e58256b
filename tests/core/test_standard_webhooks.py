"""The Standard Webhooks scheme (call_ledger/core/standard_webhooks.py), checked against the
`standardwebhooks` library: what we sign, it verifies, under either key of a rotation."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from call_ledger.core.standard_webhooks import new_secret, signature_header, signing_key


@given(body=st.binary(max_size=512), webhook_id=st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                         min_size=1, max_size=40))
def test_the_library_verifies_what_we_sign(body: bytes, webhook_id: str) -> None:
    secret = new_secret()
    timestamp = str(int(time.time()))
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp,
               "webhook-signature": signature_header([signing_key(secret)], webhook_id, timestamp, body)}
    Webhook(secret).verify(body, headers, json_parse=False)


def test_during_a_rotation_both_secrets_verify_and_a_third_does_not() -> None:
    new, old, stranger = new_secret(), new_secret(), new_secret()
    timestamp, body = str(int(time.time())), b'{"type":"call.ended"}'
    header = signature_header([signing_key(new), signing_key(old)], "msg_1", timestamp, body)
    assert header.count("v1,") == 2 and " " in header
    headers = {"webhook-id": "msg_1", "webhook-timestamp": timestamp, "webhook-signature": header}
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers) == {"type": "call.ended"}
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)


def test_a_new_secret_carries_32_random_bytes_and_never_repeats() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") and len(signing_key(s)) == 32 for s in secrets)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "", "whsec_===="])
def test_a_secret_that_names_no_key_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        signing_key(secret)
    assert secret.removeprefix("whsec_") not in str(refused.value) or not secret.removeprefix("whsec_")
