"""Opaque record ids: what a counter hands out, made unguessable (SPEC §14).

Burki's calls API gives every call an integer `id`. One counter hands them out for every
organization, so sequential ids would tell a tenant how many calls the others made between
two of its own. A record id is therefore the counter's value under a keyed permutation: a
four-round Feistel network over 52 bits (HMAC-SHA256 as its round function), moved into
[2^52, 2^53). A permutation keeps ids unique exactly as the counter's values are, whatever
their number, with nothing stored per call; without the key, two ids say nothing about how
many were handed out between them. Ids stay below 2^53, so JavaScript clients read them
exactly, and they never meet the ids 1, 2, 3, ... that earlier versions handed out.

The key is random, made once per store and kept beside the counter (call_ledger/store/lua/ids.lua).
"""

import hashlib
import hmac
from typing import NamedTuple

COUNTER_BITS = 52
OPAQUE_BASE = 1 << COUNTER_BITS  # every opaque id is in [2^52, 2^53)
_HALF = COUNTER_BITS // 2
_MASK = (1 << _HALF) - 1
_ROUNDS = 4  # Luby-Rackoff: four rounds of a pseudo-random function make a strong pseudo-random permutation


def opaque_id(key: bytes, counter: int) -> int:
    """The record id of the counter's value `counter` (0 <= counter < 2^52) under `key`."""
    if not 0 <= counter < OPAQUE_BASE:
        raise ValueError("the record id counter is outside the 52 bits ids are made from")
    left, right = counter >> _HALF, counter & _MASK
    for round_number in range(_ROUNDS):
        digest = hmac.new(key, bytes((round_number,)) + right.to_bytes(4, "big"), hashlib.sha256).digest()
        left, right = right, left ^ (int.from_bytes(digest[:4], "big") & _MASK)
    return OPAQUE_BASE | (left << _HALF) | right


def counter_of(key: bytes, record_id: int) -> int:
    """The inverse of `opaque_id` (tests and operators: which allocation made this id)."""
    if not OPAQUE_BASE <= record_id < 2 * OPAQUE_BASE:
        raise ValueError("not an opaque record id")
    value = record_id - OPAQUE_BASE
    left, right = value >> _HALF, value & _MASK
    for round_number in reversed(range(_ROUNDS)):
        digest = hmac.new(key, bytes((round_number,)) + left.to_bytes(4, "big"), hashlib.sha256).digest()
        left, right = right ^ (int.from_bytes(digest[:4], "big") & _MASK), left
    return (left << _HALF) | right


class IdBlock(NamedTuple):
    """`size` counter values reserved at once, first to first + size - 1, and the store's key:
    the record id of the i-th is `id_at(i)`, computed where it is needed (a benchmark's fill
    processes each make their share's ids, in call order, from one reservation)."""

    first: int
    size: int
    key: bytes

    def id_at(self, offset: int) -> int:
        if not 0 <= offset < self.size:
            raise IndexError("outside the block of ids")
        return opaque_id(self.key, self.first + offset)

    def ids(self) -> list[int]:
        return [opaque_id(self.key, counter) for counter in range(self.first, self.first + self.size)]
