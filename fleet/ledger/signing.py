"""Signed bid identity for notice URLs: HMAC-SHA256 over the identity and an expiry.

The bid's identity (auction, imp, bid, campaign, creative, region, model version, time,
publisher, our price) travels in the nurl/burl/lurl query with an expiry ``x`` and the key id
``k``; ``s`` is the truncated HMAC of those fields in a fixed order. The exchange's macro
values (clearing price, loss reason, currency) are not signed: the exchange fills them in.
A forged, tampered or expired notice is refused with 403 and creates nothing.

Keys: ``FLEET_NOTICE_KEYS`` as ``id:hexkey[,id:hexkey...]`` (the first signs, all verify, so a
key rotates without refusing notices for bids already out), else ``.fleet/notice_key``, created
once with mode 600. Never in code or config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from fleet.secretfile import read_or_create

SIGNED = ("a", "i", "bid", "c", "cr", "r", "m", "t", "p", "b", "x", "k")
KEY_FILE = Path(__file__).resolve().parents[2] / ".fleet" / "notice_key"


class SignatureError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_keys() -> dict[str, bytes]:
    spec = os.environ.get("FLEET_NOTICE_KEYS", "").strip()
    if spec:
        keys = {}
        for part in spec.split(","):
            kid, _, hexkey = part.strip().partition(":")
            keys[kid] = bytes.fromhex(hexkey)
        return keys
    return {"k0": bytes.fromhex(read_or_create(KEY_FILE, lambda: secrets.token_hex(32)))}


class NoticeSigner:
    def __init__(self, keys: dict[str, bytes] | None = None, ttl_s: float = 86_400.0, clock=time.time):
        self.keys = keys if keys is not None else load_keys()
        self.current = next(iter(self.keys))
        self.ttl_s = ttl_s
        self.clock = clock

    def _mac(self, key: bytes, fields: dict[str, str]) -> str:
        msg = "\x1f".join(f"{k}={fields.get(k, '')}" for k in SIGNED).encode()
        return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()[:16]).decode().rstrip("=")

    def sign(self, fields: dict[str, str]) -> dict[str, str]:
        """``fields`` plus expiry, key id and signature."""
        out = {**fields, "x": str(int(self.clock() + self.ttl_s)), "k": self.current}
        out["s"] = self._mac(self.keys[self.current], out)
        return out

    def verify(self, q: dict[str, str]) -> None:
        key = self.keys.get(q.get("k", ""))
        sig = q.get("s", "")
        if key is None or not sig:
            raise SignatureError("unsigned or unknown key")
        if not hmac.compare_digest(self._mac(key, q).encode(), sig.encode("utf-8", "replace")):  # bytes: any text compares
            raise SignatureError("bad signature")
        try:
            expires = int(q.get("x", ""))
        except ValueError:
            raise SignatureError("bad expiry") from None
        if self.clock() > expires:
            raise SignatureError("expired")
