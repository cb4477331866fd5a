"""Signed notice URLs: each URL's HMAC-SHA256 binds the bid's identity, its kind, the response
currency, the test flag and the bid's notice deadline.

The identity (auction, imp, bid, campaign, creative, region, model version, time, publisher, our
price), the response currency ``cu``, ``e=1`` for a test request, the deadline ``x`` and the key
id ``k`` are common to a bid's URLs; the kind ``n`` (win, bill, loss, click) is signed last, so
one HMAC state over the common part is copied per URL (one pass over the identity, not four).
Each value is covered as the URL carries it, percent-encoded (``encode``), so the bid path encodes
a bid's fields once for both its URLs and its signatures. ``s`` is the truncated HMAC. A loss URL
turned into a bill, or a deadline pushed out, no longer verifies: 403. The exchange's macro values (clearing price, loss reason, its currency) are not
signed: the exchange fills them in, and ``fleet.pipeline.notices`` judges them.

Keys: ``FLEET_NOTICE_KEYS`` as ``id:hexkey[,id:hexkey...]`` (the first signs, all verify, so a
key rotates without refusing notices for bids already out), else ``.fleet/notice_key``, created
once with mode 600. Never in code or config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from fleet.secretfile import read_or_create

COMMON = ("a", "i", "bid", "c", "cr", "r", "m", "t", "p", "b", "cu", "e", "x", "k")
SIGNED = COMMON + ("n",)
KEY_FILE = Path(__file__).resolve().parents[2] / ".fleet" / "notice_key"


class SignatureError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


MIN_KEY_BYTES = 16


def load_keys() -> dict[str, bytes]:
    """``FLEET_NOTICE_KEYS`` (``id:hex,id:hex``, the first signs, every one verifies), else the
    generated key file. A malformed list stops the start: a stray comma or an id without its key
    would otherwise leave an empty key that anyone can sign bills with."""
    spec = os.environ.get("FLEET_NOTICE_KEYS", "").strip()
    if spec:
        keys = {}
        for part in spec.split(","):
            kid, _, hexkey = part.strip().partition(":")
            try:
                key = bytes.fromhex(hexkey)
            except ValueError:
                key = b""
            if not kid or kid in keys or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"FLEET_NOTICE_KEYS: entry {kid or '(no id)'!r} needs a unique id and a key "
                                 f"of at least {MIN_KEY_BYTES} bytes in hex (id:hex,id:hex)")
            keys[kid] = key
        return keys
    return {"k0": bytes.fromhex(read_or_create(KEY_FILE, lambda: secrets.token_hex(32)))}


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _KeyPads:
    """HMAC-SHA256 (RFC 2104) from a key's two padded hash states, copied per message: exactly
    ``hmac.new(key, msg, sha256).digest()``, without the Python-level ``HMAC`` object each copy
    of which costs (a bid signs four URLs; this is ~40% of signing's cost)."""

    def __init__(self, key: bytes):
        if len(key) > 64:  # the block size: a longer key is hashed first, as hmac does
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(key.translate(_IPAD))
        self.outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, inner) -> bytes:
        """The MAC of the message ``inner`` (a copy of ``self.inner``) has been fed."""
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def encode(value: str) -> str:
    """``value`` percent-encoded with nothing left safe, exactly ``quote(value, safe="")`` (and
    so what ``urlencode`` writes): the form a notice URL carries and a signature covers. Most ids
    are unreserved characters only and are their own encoding, without ``quote``'s cost."""
    return value if _UNRESERVED(value) else quote(value, safe="")


class NoticeSigner:
    def __init__(self, keys: dict[str, bytes] | None = None, ttl_s: float = 86_400.0, clock=time.time):
        self.keys = keys if keys is not None else load_keys()
        self.current = next(iter(self.keys))
        self.ttl_s = ttl_s  # the deadline when the caller names none
        self.clock = clock
        self._keyed: dict[bytes, _KeyPads] = {}  # key -> its HMAC pads

    def _common(self, key: bytes, encoded: dict[str, str]):
        """The key's pads, and the inner hash over the common fields, each as ``encode`` writes
        it: a separator (or "=") in an exchange-supplied id cannot shift where one signed field
        ends and the next begins."""
        pads = self._keyed.get(key)
        if pads is None:
            pads = self._keyed[key] = _KeyPads(key)
        h = pads.inner.copy()
        h.update("\x1f".join([f"{k}={encoded.get(k, '')}" for k in COMMON]).encode())
        return pads, h

    def sign_encoded(self, encoded: dict[str, str], kinds: tuple[str, ...],
                     expires_at: float | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """``encoded`` (field -> value already through ``encode``) with deadline and key id, and
        one signature per kind (kind -> ``s``): what the bid path puts in a bid's URLs. Raw values
        here would put a raw ``&`` or ``=`` into the URL and the signed text alike: encode first."""
        x = int(expires_at if expires_at is not None else self.clock() + self.ttl_s)
        out = {**encoded, "x": str(x), "k": encode(self.current)}
        pads, base = self._common(self.keys[self.current], out)
        sigs = {}
        for kind in kinds:
            h = base.copy()
            h.update(f"\x1fn={encode(kind)}".encode())
            sigs[kind] = _b64(pads.digest(h))
        return out, sigs

    def sign_kinds(self, fields: dict[str, str], kinds: tuple[str, ...],
                   expires_at: float | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """``fields`` (plain values) with deadline and key id, and one signature per kind."""
        enc, sigs = self.sign_encoded({k: encode(v) for k, v in fields.items()}, kinds, expires_at)
        return {**fields, "x": enc["x"], "k": self.current}, sigs

    def sign(self, fields: dict[str, str], expires_at: float | None = None) -> dict[str, str]:
        """``fields`` (with its kind ``n``) plus deadline, key id and signature."""
        out, sigs = self.sign_kinds(fields, (fields.get("n", ""),), expires_at)
        out["s"] = sigs[fields.get("n", "")]
        return out

    def verify(self, q: dict[str, str], kind: str | None = None) -> None:
        """Refuses (``SignatureError``) a query whose signature, key or deadline fails, or whose
        signed kind is not ``kind`` (a loss URL called as a bill)."""
        key = self.keys.get(q.get("k", ""))
        sig = q.get("s", "")
        if not key or not sig:  # an empty key is never one (load_keys refuses it too)
            raise SignatureError("unsigned or unknown key")
        pads, h = self._common(key, {k: encode(q.get(k, "")) for k in COMMON})
        h.update(f"\x1fn={encode(q.get('n', ''))}".encode())
        if not hmac.compare_digest(_b64(pads.digest(h)).encode(), sig.encode("utf-8", "replace")):  # bytes: any text compares
            raise SignatureError("bad signature")
        if kind is not None and q.get("n") != kind:
            raise SignatureError("kind swapped")
        try:
            expires = int(q.get("x", ""))
        except ValueError:
            raise SignatureError("bad expiry") from None
        if self.clock() > expires:
            raise SignatureError("expired")
