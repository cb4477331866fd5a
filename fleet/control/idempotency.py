"""Idempotent writes: one answer per ``Idempotency-Key``, the key claimed before the write runs.

A request first claims its key (``SET key {fp, state: pending} NX``). The winner runs the write
and then stores its answer over the claim; a concurrent request with another body (fingerprint)
is a 422 at once; one with the same body waits for the answer (up to ``wait_s``, then 409: in
progress) and returns it. A write that raises or answers >= 500 frees the key, so a retry runs.
Inside one control actor the writes themselves also run one at a time (an asyncio lock), so a
write's read-modify-write is atomic whatever it awaits.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging

log = logging.getLogger("fleet.control")
IDEM_PREFIX = "fleet:control:idem:"
IDEM_TTL_S = 86_400  # an answer is kept this long
CLAIM_TTL_S = 60  # a claim whose writer died (or could not store its answer) frees the key after this
WAIT_S = 5.0  # a same-request retry waits this long for the first one's answer
POLL_S = 0.02

IN_PROGRESS = (409, {"error": "a request with this idempotency key is in progress"})
MISMATCH = (422, {"error": "idempotency key reused with a different request"})


class Idempotency:
    def __init__(self, wait_s: float = WAIT_S):
        self.wait_s = wait_s
        self.lock = asyncio.Lock()

    async def write(self, fn):
        """Run a write (``fn() -> (status, body)``, or an awaitable of it), one at a time."""
        async with self.lock:
            out = fn()
            if inspect.isawaitable(out):
                out = await out
            return out

    async def run(self, redis, key: str | None, fingerprint: str, fn, persist=None):
        """Run ``fn`` once per key: a retry with the same key and request gets the first answer
        again; the same key with another request is a 422. ``persist`` (async, True when saved)
        makes the write durable before its answer is stored: a 200 is never the answer to a
        write a restart would lose (a failed save is a 503, and frees the key)."""
        if persist is not None:
            inner = fn

            async def fn():
                out = inner()
                status, body = (await out) if inspect.isawaitable(out) else out
                if status < 500 and not await persist():
                    return 503, {"error": "the change could not be persisted: retry with the same key"}
                return status, body
        if key is None or redis is None:
            return await self.write(fn)
        rkey = IDEM_PREFIX + hashlib.sha256(key.encode()).hexdigest()
        fp = hashlib.sha256(fingerprint.encode()).hexdigest()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        claim = json.dumps({"fp": fp, "state": "pending"})
        while not await redis.set(rkey, claim, nx=True, ex=CLAIM_TTL_S):
            raw = await redis.get(rkey)
            if raw is not None:
                prior = json.loads(raw)
                if prior.get("fp") != fp:
                    return MISMATCH
                if prior.get("state") != "pending":
                    return prior["status"], prior["body"]
            # pending (or freed by a failed write just now: claim it again)
            if loop.time() >= deadline:
                return IN_PROGRESS
            await asyncio.sleep(POLL_S)
        try:
            status, body = await self.write(fn)
        except BaseException:
            await self._free(redis, rkey)
            raise
        if status >= 500:
            await self._free(redis, rkey)
            return status, body
        try:
            await redis.set(rkey, json.dumps({"fp": fp, "status": status, "body": body}), ex=IDEM_TTL_S)
        except Exception as exc:  # the write is done; the claim lapses after CLAIM_TTL_S
            log.warning("idempotency answer not stored (Redis): %s", exc)
        return status, body

    @staticmethod
    async def _free(redis, rkey: str) -> None:
        try:
            await redis.delete(rkey)
        except Exception as exc:  # the claim lapses after CLAIM_TTL_S
            log.warning("idempotency claim not freed (Redis): %s", exc)
