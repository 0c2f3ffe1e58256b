"""Which signature was used, with which parameters: the pure half of the signature ledger.

Twilio and Plivo sign the plain concatenation `name1 value1 name2 value2 …` (sorted by
name), with no separator and no timestamp. The same bytes split differently are other
parameters under the same valid signature: `Event=Hangup` re-sent as `Even=tHangup`, or
`From` absorbing `SequenceNumber` (`From=+14155551234SequenceNumber3`). Strict field
formats refuse most such re-splits; as defence in depth, intake remembers each accepted
signature with a digest of the parameters it came with, and refuses the same signature
with any other parameters (`call_ledger.store.signatures`).

- The identity is the MAC that matched, not the header's text: Plivo accepts any one of
  several comma-separated signatures, and extra garbage entries would otherwise make a
  new identity for the same signature. It is hashed with the source's name, so a Redis
  key never holds a signature.
- The digest covers what the parsers read: the method, the URL's query pairs and, unless
  it is a GET, the form pairs, each as a sorted multiset of (name, value). Serialised as
  JSON, whose quoting has no boundary to move, so two different parameter sets never
  share a canonical text.
"""

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii


@dataclass(frozen=True)
class SignatureUse:
    """One accepted signature (`identity`) and the parameters it was accepted with (`params_digest`)."""

    identity: str
    params_digest: bytes


def signature_identity(source: str, mac: bytes) -> str:
    """URL-safe base64 (unpadded, 43 characters) of SHA-256(source | MAC): the key of the signature."""
    digest = hashlib.sha256(source.encode("utf-8") + b"|" + mac).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _canonical(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    return sorted([name, value] for name, value in pairs)


def params_digest(method: str, query: Iterable[tuple[str, str]], form: Iterable[tuple[str, str]]) -> bytes:
    """SHA-256 of the canonical (method, sorted query pairs, sorted form pairs).

    Repeated pairs count (a multiset): the same request redelivered has the same digest,
    a request with one pair more or less does not. `ensure_ascii` escapes every character
    JSON would otherwise pass through, lone surrogates included, so this never fails.
    """
    canonical = f"[{encode_basestring_ascii(method.upper())},{_pairs_json(query)},{_pairs_json(form)}]"
    return hashlib.sha256(canonical.encode("ascii")).digest()


def _pairs_json(pairs: Iterable[tuple[str, str]]) -> str:
    """`json.dumps(_canonical(pairs), ensure_ascii=True, separators=(",", ":"))`, character for
    character (the digests already stored must stay valid), with json's own C string encoder and
    none of json.dumps's per-call set-up (a profile put that at ~4% of a signed Twilio webhook)."""
    # Pairs sorted as tuples are in the order of `_canonical`'s lists; a list comprehension, not a
    # generator, for the join.
    q = encode_basestring_ascii
    return "[" + ",".join([f"[{q(name)},{q(value)}]" for name, value in sorted(pairs)]) + "]"


def params_digest_reference(method: str, query: Iterable[tuple[str, str]],
                            form: Iterable[tuple[str, str]]) -> bytes:
    """The digest as first defined (json.dumps): what params_digest must keep equal (tests)."""
    canonical = json.dumps([method.upper(), _canonical(query), _canonical(form)], ensure_ascii=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).digest()


def signature_use(source: str, mac: bytes, method: str, query: Iterable[tuple[str, str]],
                  form: Iterable[tuple[str, str]]) -> SignatureUse:
    """What a URL-signed source's `verify` returns once `mac` matched."""
    return SignatureUse(signature_identity(source, mac), params_digest(method, query, form))
