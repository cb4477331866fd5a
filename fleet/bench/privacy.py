"""Per-request cost of the privacy decision: ``python -m fleet.bench.privacy``.

Times ``fleet.pipeline.privacy.decide`` on decoded requests: no privacy signal, a GDPR request
whose TC string is in the decoder's LRU (a user's second request), one whose string is not
(every string new: the cache cleared before each call), a GPP US National request, and the
worst strings the length cap lets through (the largest vendor bitfield, the most range
entries). Prints
microseconds per call (median of rounds). Strings are built by ``tests/privacy_strings.py``.
"""

from __future__ import annotations

import statistics
import sys
import time

import msgspec

from fleet.config import REPO_ROOT
from fleet.openrtb import consent
from fleet.openrtb.model import BidRequest
from fleet.pipeline.privacy import decide


def _req(regs: dict, user: dict | None = None) -> BidRequest:
    body = {"id": "b", "imp": [{"id": "1"}], "regs": regs, "user": user or {},
            "device": {"ua": "Mozilla/5.0", "ip": "81.2.69.160"}}
    return msgspec.convert(body, BidRequest)


def _time(fn, n: int, rounds: int = 5) -> float:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from privacy_strings import OUR_VENDOR, gpp_string, tc_string, us_national

    vendors = list(range(1, 1200, 3)) + [OUR_VENDOR]  # a realistic string: ~400 of ~1200 vendors
    real = tc_string(vendors=vendors, li_vendors=vendors[::2], purposes=[1, 2, 3, 4, 7, 9, 10], li_purposes=[2, 7])
    worst = tc_string(vendors=[OUR_VENDOR, 11_000], li_vendors=[11_000], purposes=[1, 3, 4])
    worst_ranges = tc_string(vendors=list(range(1, 2700, 2)), purposes=[1, 3, 4], ranged=True)  # ~1350 entries
    assert len(worst) <= consent.MAX_CHARS and len(worst_ranges) <= consent.MAX_CHARS
    plain = _req({})
    gdpr = _req({"gdpr": 1}, {"consent": real})
    worst_req = _req({"gdpr": 1}, {"consent": worst})
    ranges_req = _req({"gdpr": 1}, {"consent": worst_ranges})
    usnat = _req({"gpp": gpp_string({7: us_national()}), "gpp_sid": [7]})
    print(f"TC string: {len(real)} chars; worst-case string: {len(worst)} chars")
    print(f"no signal:            {_time(lambda: decide(plain), 20000):8.2f} us")
    decide(gdpr)
    print(f"GDPR, cached string:  {_time(lambda: decide(gdpr), 20000):8.2f} us")

    def miss(r=gdpr):
        consent.tcf.cache_clear()
        return decide(r)

    print(f"GDPR, new string:     {_time(miss, 200):8.2f} us")
    print(f"GDPR, worst bitfield: {_time(lambda: miss(worst_req), 5):8.2f} us")
    print(f"GDPR, worst ranges:   {_time(lambda: miss(ranges_req), 5):8.2f} us")
    decide(usnat)
    print(f"GPP US National:      {_time(lambda: decide(usnat), 20000):8.2f} us")


if __name__ == "__main__":
    main()
