"""A partner's own nurl/burl/lurl, fired from the ledger's path once per (bid, kind).

When a partner's bid wins our auction its ``selected`` event carries the partner's notice URLs
(macros unfilled), price and currency. When our own win, bill or loss notice for that bid is
counted by the ledger consumer, the partner's matching URL (win: ``nurl``, billed: ``burl``,
lost: ``lurl``) is due. Never from the request path, and in two steps:

1. **Queued with the ledger** (``PartnerOutbox.stage``: NOTE script calls in the consumer's
   pipeline, before the entries are acknowledged). A partner-won selected event stores the
   partner's data under ``pbid:<bid>``, in a call placed *before* the batch's APPLY, so a bid the
   ledger holds as selected (``bid:<bid>`` ``reserved``) without partner data is not a partner's,
   whichever consumer looks and however their pipelines interleave. A notice for a partner's bid
   (a call placed after the APPLY) claims ``pn:<bid>:<kind>`` with ``SET NX`` (state ``queued``)
   and only then enters the queue (``pnq``, a sorted set by due time; the notice's figures in
   ``pnj``). A notice that overtook its selected event (another replica flushed first) waits in
   ``pbid:<bid>`` as ``early:<kind>`` and is queued when the selected event arrives. Resent
   notices, replayed spill files, concurrent consumers and a consumer re-reading its pending
   entries after a kill all meet the claim: queued once.
2. **Fired by a sender** (``PartnerNoticeSender``): CLAIM moves a due job from ``queued`` (or
   ``retry``) to ``sending|<attempt>|<token>`` atomically and pushes its due time to the end of a
   lease, then the URL is called (httpx, short timeout) and SETTLE moves it on, only if the state
   is still the claim's: ``done`` (any answer < 400), ``retry`` (connection refused or not
   made, 408, 429, >= 500: not taken; backoff doubling) or, after ``max_tries``, ``dead`` (also
   at once for another 4xx or an unusable URL); ``skipped`` when the partner sent no URL of
   that kind. Any number of senders can share a region's queue: a job is claimed by one.

**At most once, on purpose.** The claim is written before the call. A sender that dies (or
stalls past its lease) between the claim and the outcome leaves the job ``sending``; whoever
finds it due again cannot know whether the call left, so it does not call again: the job is
settled ``unknown`` and dead-lettered with its URL filled (``pndead``, counted ``pn_unknown``),
for reconciliation with the partner. The same holds for a call whose request was sent and whose
answer never came (read timeout, connection dropped): ``unknown``, not retried. A partner is
therefore never notified twice for one (bid, kind) from our side; the price of that is a visible,
bounded list of notices whose delivery is unknown (at most the calls in flight at a crash).
Retries happen only where the call is known not to have been taken.

**Only the partner's own hosts.** The URLs come from the partner's answer, so a partner could
point them anywhere (our Redis, a metadata service). Given the partners' bid endpoints
(``hosts``: partner id -> the endpoint's host), a URL is called only when its host is that host,
or shares its last two labels (``win.dsp.example`` for ``bid.dsp.example``; an IP literal must
match exactly); any other is dead-lettered without a call.

Macros: ``${AUCTION_PRICE}`` the clearing price we were charged (the notice's, fleet currency)
converted to the partner's currency and never above the partner's bid (empty on a loss: nothing
was charged), ``${AUCTION_CURRENCY}`` the partner's currency, ``${AUCTION_ID}`` and
``${AUCTION_IMP_ID}`` the auction and imp, ``${AUCTION_BID_ID}`` the partner's bid id where the
event has one (else ours), ``${AUCTION_SEAT_ID}`` the partner's seat where known,
``${AUCTION_LOSS}`` 0 on a win or bill, the exchange's loss reason on a loss; each also in its
percent-encoded form (``%24%7BAUCTION_PRICE%7D``). State lives under ``fleet:<region>:ledger:``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
import uuid
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from fleet.ledger.partner_scripts import CLAIM, NOTE, SETTLE

log = logging.getLogger("fleet.ledger")

KIND_URL = {"win": "nurl", "billed": "burl", "lost": "lurl"}
STATE_TTL_S = 14 * 86_400
EARLY_TTL_S = 86_400  # a notice waiting for its selected event

class PartnerData(msgspec.Struct, kw_only=True):
    """What a partner-won ``selected`` event leaves for its notices (``pbid:<bid>`` ``d``)."""

    partner: str
    urls: dict[str, str | None]
    price: float  # the partner's bid, its currency (CPM)
    cur: str
    auction: str = ""
    imp: str = ""
    bid_id: str = ""  # the partner's own bid id, where the event carries one
    seat: str = ""


class NoticeInfo(msgspec.Struct, kw_only=True):
    """Our own notice's figures for the partner's macros (``pnj``)."""

    kind: str
    price: float = 0.0  # CPM, fleet currency: the clearing price (win, billed)
    reason: int = 0  # loss reason (lost)
    auction: str = ""
    imp: str = ""
    bid: str = ""


_json = msgspec.json.Encoder()


def _test(ev) -> bool:
    return "test" in ev.flag.split(",")


class PartnerOutbox:
    """The consumer's hook: queue partner notices in the same pipeline as the batch's APPLY."""

    def __init__(self, redis, prefix: str, clock=time.time):
        self.prefix = prefix
        self.clock = clock
        self._note = redis.register_script(NOTE)

    @staticmethod
    def entries(events, selected: bool) -> list:
        """(kind, bid, info) for the partner-won selected events, or for the notices."""
        sel, notes = [], []
        for ev in events:
            if _test(ev):
                continue  # an OpenRTB test request: no money, no partner notice
            if ev.kind == "selected":
                urls = getattr(ev, "partner_urls", None)
                if getattr(ev, "partner", "") and urls is not None:
                    d = PartnerData(partner=ev.partner, urls=msgspec.structs.asdict(urls),
                                    price=float(ev.partner_price), cur=ev.partner_cur or "", auction=ev.auction,
                                    imp=ev.imp, bid_id=ev.partner_bid, seat=ev.partner_seat)
                    sel += ("selected", ev.bid, _json.encode(d))
            elif ev.kind in KIND_URL and ev.bid:
                notes += (ev.kind, ev.bid, _json.encode(NoticeInfo(
                    kind=ev.kind, price=ev.price, reason=ev.reason, auction=ev.auction, imp=ev.imp, bid=ev.bid)))
        return sel if selected else notes

    async def stage(self, events, pipe, selected: bool) -> int:
        """Adds a NOTE call to ``pipe`` for the batch's partner-won selected events (``selected``:
        call it before the batch's APPLY) or its notices (after); 1 if it did (its reply, the
        number of jobs queued, is then in the pipeline's results), else 0."""
        args = self.entries(events, selected)
        if not args:
            return 0
        await self._note(keys=[self.prefix], args=[self.clock(), STATE_TTL_S, EARLY_TTL_S, *args], client=pipe)
        return 1


def _num(x: float) -> str:
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s or "0"


def macro_values(d: PartnerData, n: NoticeInfo, rates: dict[str, float]) -> dict[str, str] | str:
    """The macros' values for one notice, or why it cannot be filled."""
    price = ""
    if n.kind in ("win", "billed"):
        rate = rates.get(d.cur)
        if not rate or rate <= 0 or not math.isfinite(n.price):
            return f"unknown currency {d.cur!r}"
        price = _num(max(0.0, min(n.price / rate, d.price)))
    return {"AUCTION_PRICE": price, "AUCTION_CURRENCY": d.cur, "AUCTION_ID": d.auction or n.auction,
            "AUCTION_BID_ID": d.bid_id or n.bid, "AUCTION_IMP_ID": d.imp or n.imp, "AUCTION_SEAT_ID": d.seat,
            "AUCTION_LOSS": "0" if n.kind != "lost" else (str(n.reason) if n.reason else "")}


_MACRO = re.compile(r"\$\{(AUCTION_[A-Z_]+)\}|%24%7B(AUCTION_[A-Z_]+)%7D", re.IGNORECASE)


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each known macro (plain or percent-encoded) replaced by its value,
    percent-encoded; unknown macros are left as they are."""
    def sub(m: re.Match) -> str:
        name = (m.group(1) or m.group(2)).upper()
        return quote(values[name], safe="") if name in values else m.group(0)
    return _MACRO.sub(sub, template)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def partners_host(url: str, endpoint_host: str) -> bool:
    """Whether ``url`` points at the partner whose bid endpoint is on ``endpoint_host``."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    want = endpoint_host.lower()
    if host == want:
        return True
    if not host or _is_ip(host) or _is_ip(want):
        return False
    site = ".".join(want.split(".")[-2:])
    return host == site or host.endswith("." + site)


class PartnerNoticeSender:
    """Claims due partner notices, calls them, settles them (see the module docstring)."""

    def __init__(self, redis, prefix: str, rates: dict[str, float], *, client: httpx.AsyncClient | None = None,
                 timeout_s: float = 2.0, max_tries: int = 5, backoff_s: tuple[float, float] = (1.0, 300.0),
                 lease_s: float = 30.0, batch: int = 64, idle_s: float = 0.2, clock=time.time,
                 hosts: dict[str, str] | None = None):
        self.redis = redis
        self.hosts = hosts  # partner id -> its bid endpoint's host (None: not checked: tests, tools)
        self.keys = [prefix]
        self.prefix = prefix
        self.rates = rates
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 1.0)),
                                                  limits=httpx.Limits(max_connections=64, keepalive_expiry=5.0))
        self.max_tries = max_tries
        self.backoff_s = backoff_s
        self.lease_s = max(lease_s, 3 * timeout_s)  # a claim outlives any call it covers
        self.batch = batch
        self.idle_s = idle_s
        self.clock = clock
        self.owner = uuid.uuid4().hex[:12]
        self._seq = 0
        self._claim = redis.register_script(CLAIM)
        self._settle = redis.register_script(SETTLE)
        self.counts = {"done": 0, "retry": 0, "dead": 0, "unknown": 0, "skipped": 0, "lost_lease": 0}
        self.failures = 0  # steps that raised (Redis away)
        self.last_error = ""

    async def _fire(self, member: str, claim: str, job: bytes, data: bytes) -> str:
        attempt = int(claim.split("|")[1])
        try:
            n = msgspec.json.decode(job, type=NoticeInfo)
            d = msgspec.json.decode(data, type=PartnerData)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await self._done(member, claim, "dead", f"undecodable job: {exc}", "")
        template = d.urls.get(KIND_URL[n.kind])
        if not template:
            return await self._done(member, claim, "skipped", "no url", "")
        values = macro_values(d, n, self.rates)
        if isinstance(values, str):
            return await self._done(member, claim, "dead", values, template)
        url = fill(template, values)
        if self.hosts is not None and not partners_host(url, self.hosts.get(d.partner, "")):
            return await self._done(member, claim, "dead", f"not {d.partner}'s host", url)
        try:
            r = await self.client.get(url)
            status, why = r.status_code, f"HTTP {r.status_code}"
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            status, why = None, f"not sent: {type(exc).__name__}"
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return await self._done(member, claim, "dead", f"bad url: {exc}", url)
        except httpx.TransportError as exc:  # sent, no answer: it may have been taken
            return await self._done(member, claim, "unknown", f"no answer: {type(exc).__name__}", url)
        except Exception as exc:  # anything else before the request left (a malformed URL)
            return await self._done(member, claim, "dead", f"bad url: {type(exc).__name__}: {exc}", url)
        if status is not None and status < 400:
            return await self._done(member, claim, "done", why, url)
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return await self._done(member, claim, "dead", f"refused: {why}", url)
        if attempt >= self.max_tries:
            return await self._done(member, claim, "dead", f"{attempt} tries, last {why}", url)
        delay = min(self.backoff_s[0] * 2 ** (attempt - 1), self.backoff_s[1])
        return await self._done(member, claim, "retry", why, url, due=self.clock() + delay)

    async def _done(self, member, claim, outcome, why, url, due=0.0) -> str:
        ok = await self._settle(keys=self.keys, args=[member, claim, outcome, due, why, STATE_TTL_S, url])
        if not int(ok):
            self.counts["lost_lease"] += 1
            log.warning("partner notice %s: outcome %s after its lease ran out (settled unknown)", member, outcome)
            return "lost_lease"
        self.counts[outcome] += 1
        if outcome in ("dead", "unknown"):
            log.warning("partner notice %s %s: %s", member, outcome, why)
        return outcome

    async def step(self) -> int:
        """Claim the due jobs (up to ``batch``), fire them concurrently, settle each; how many."""
        self._seq += 1
        jobs = await self._claim(keys=self.keys, args=[self.clock(), self.batch, f"{self.owner}:{self._seq}",
                                                       self.lease_s, STATE_TTL_S])
        if not jobs:
            return 0
        await asyncio.gather(*[self._fire(_s(m), _s(c), j, d) for m, c, j, d in jobs])
        return len(jobs)

    async def drain(self) -> int:
        """Fire until nothing is due now (tests, tools)."""
        total = 0
        while n := await self.step():
            total += n
        return total

    async def run(self, stop: asyncio.Event | None = None) -> None:
        delay = self.idle_s
        while stop is None or not stop.is_set():
            try:
                n = await self.step()
                delay = self.idle_s
                if n < self.batch:
                    await asyncio.sleep(self.idle_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: claims and queue stay where they are
                self.failures += 1
                self.last_error = repr(exc)[:200]
                log.warning("partner notice sender: %s (retry in %.1fs)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def backlog(self) -> int:
        try:
            return int(await self.redis.zcard(self.prefix + "pnq"))
        except Exception:
            return -1

    def summary(self) -> dict:
        return {**self.counts, "failures": self.failures, "last_error": self.last_error}

    async def aclose(self) -> None:
        await self.client.aclose()


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x
