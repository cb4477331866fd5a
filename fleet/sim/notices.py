"""The simulated exchanges' notices: scheduled with a real exchange's imperfections, then sent.

A part of ``fleet.sim.exchange.Exchanges`` (its base): each notice is planned with the run's
drop, duplicate, late, delayed-bill and resend rates, kept in a heap by when it is due, and sent
over HTTP by one loop with bounded concurrency and retries of failed calls. Forgeries (the money
bench) are sent once and counted refused or accepted. What the exchange charged (``billed``)
counts a bill only when the fleet acknowledged it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from urllib.parse import urlsplit

import aiohttp


def substitute(url: str, *, auction_id: str, imp_id: str, price: float | None = None,
               loss: int | None = None, min_to_win: float | None = None, currency: str | None = "USD") -> str:
    """Fill the OpenRTB macros the way an exchange does (``currency`` None: left unsubstituted,
    as some exchanges do)."""
    subs = {"${AUCTION_ID}": auction_id, "${AUCTION_IMP_ID}": imp_id,
            "${AUCTION_CURRENCY}": "${AUCTION_CURRENCY}" if currency is None else currency,
            "${AUCTION_PRICE}": "" if price is None else f"{price:.4f}",
            "${AUCTION_LOSS}": "" if loss is None else str(loss),
            "${AUCTION_MIN_TO_WIN}": "" if min_to_win is None else f"{min_to_win:.4f}"}
    for k, v in subs.items():
        url = url.replace(k, v)
    return url


class NoticeQueue:
    """Expects of its subclass: ``cfg`` (``SimConfig``), ``rng``, the counters ``notices``,
    ``notice_outcomes``, ``notice_errors``, ``forged``, ``billed``, the heap ``_pending`` with its
    ``_seq``, and ``_origin`` (scheme and host of the fleet)."""

    def _forge(self, bid: dict, charged: float, ident: dict) -> None:
        """What a fraudster holding our URLs tries: the loss URL called as a bill, and the bill
        URL with our bid raised (so a higher price would pass the bid check)."""
        swapped = substitute(bid["lurl"], loss=102, min_to_win=charged, **ident).replace("/notice/loss?", "/notice/bill?")
        self._push(0.0, "forged", swapped + f"&px={charged:.4f}")
        raised = substitute(bid["burl"], price=charged * 3, **ident)
        head, _, tail = raised.partition("&b=")
        value, _, rest = tail.partition("&")
        self._push(0.0, "forged", f"{head}&b={float(value) * 4:.4f}&{rest}")

    def _push(self, delay: float, kind: str, url: str, truth=None) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (time.perf_counter() + delay, self._seq, kind, url, truth))

    def _notice(self, kind: str, url: str, truth: tuple | None = None) -> None:
        """Schedule a notice with the exchange's imperfections: drop, duplicate, delay, resend."""
        self.notice_outcomes[f"{kind}.planned"] += 1
        r = self.rng
        if r.random() < self.cfg.drop_rate:
            self.notice_outcomes[f"{kind}.dropped"] += 1
            return
        delay = 0.0
        if r.random() < self.cfg.late_rate:
            delay = r.uniform(self.cfg.late_min_s, self.cfg.late_max_s)
            self.notice_outcomes[f"{kind}.late"] += 1
        if kind == "bill" and self.cfg.bill_delay_rate and r.random() < self.cfg.bill_delay_rate:
            delay = r.uniform(self.cfg.bill_delay_min_s, self.cfg.bill_delay_max_s)
            self.notice_outcomes["bill.delayed"] += 1
        copies = 2 if r.random() < self.cfg.dup_rate else 1
        if copies == 2:
            self.notice_outcomes[f"{kind}.duplicated"] += 1
        if self.cfg.resend_rate and r.random() < self.cfg.resend_rate:
            copies += self.cfg.resend_copies
            self.notice_outcomes[f"{kind}.resent"] += 1
        for i in range(copies):
            self._push(delay + 0.2 * i, kind, url, truth)

    async def _send_notices(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        sem = asyncio.Semaphore(64)

        async def send(kind: str, url: str, truth) -> None:
            u = urlsplit(url)
            for attempt in range(self.cfg.notice_retries + 1):
                if attempt:
                    await asyncio.sleep(min(0.25 * 2 ** attempt, 4.0))
                    self.notice_outcomes[f"{kind}.retried"] += 1
                async with sem:
                    try:
                        async with session.get(f"{self._origin}{u.path}?{u.query}") as resp:
                            await resp.read()
                            status = resp.status
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        self.notice_errors[f"{kind}.transport"] += 1
                        continue
                if kind == "forged":
                    self.forged["refused" if status == 403 else f"accepted.{status}"] += 1
                    return
                if status == 200:
                    self.notices[kind] += 1
                    if truth is not None:
                        self.billed.setdefault(*truth)
                    return
                self.notice_errors[f"{kind}.{status}"] += 1
                if status < 500:
                    return  # refused: an exchange does not resend what the bidder rejected

        tasks: set[asyncio.Task] = set()
        while not (stop.is_set() and not self._pending):
            now = time.perf_counter()
            while self._pending and self._pending[0][0] <= now:
                _, _, kind, url, truth = heapq.heappop(self._pending)
                t = asyncio.create_task(send(kind, url, truth))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            await asyncio.sleep(0.02)
        if tasks:
            await asyncio.gather(*tasks)
