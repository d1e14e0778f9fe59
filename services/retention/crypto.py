"""Envelope encryption for kept results (AES-256-GCM throughout).

    master key (settings, by key id) --wraps--> account key --wraps--> object key --seals--> bytes

Each object gets its own random 256-bit key; it is stored only wrapped by its
account's key, and account keys are stored only wrapped by a master key. Every
wrapping binds what it wraps to its owner through the associated data, so a wrapped
key or a blob moved to another row or account does not open. Destroying an account
key makes every object of that account unreadable wherever a copy of it lies.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12


class TamperedError(Exception):
    """The bytes, or the key that should open them, are not what was sealed."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """nonce || AES-256-GCM(plaintext), authenticated together with `context`."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context)
    except (InvalidTag, ValueError):
        raise TamperedError("authentication failed") from None


@dataclass(frozen=True)
class MasterKeys:
    """Master keys by id; `current` wraps new account keys, the others still unwrap old ones."""

    keys: dict[str, bytes]
    current: str

    @classmethod
    def parse(cls, spec: str) -> MasterKeys:
        """`id:base64key[,id:base64key...]`, the first being current (rotate by prepending)."""
        keys: dict[str, bytes] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key_id, _, encoded = entry.partition(":")
            key = base64.b64decode(encoded, validate=True)
            if not key_id or len(key) != KEY_BYTES:
                raise ValueError(f"master key {key_id or '?'} must be id:base64 of {KEY_BYTES} random bytes")
            keys[key_id] = key
        if not keys:
            raise ValueError("no master key configured")
        return cls(keys, next(iter(keys)))

    def wrap(self, account_key: bytes, account_id: str) -> tuple[str, bytes]:
        return self.current, seal(self.keys[self.current], account_key, b"account:" + account_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes, account_id: str) -> bytes:
        if key_id not in self.keys:
            raise TamperedError(f"master key {key_id} is not configured")
        return unseal(self.keys[key_id], wrapped, b"account:" + account_id.encode())


def object_context(account_id: str, result_id: str) -> bytes:
    return f"result:{account_id}:{result_id}".encode()
