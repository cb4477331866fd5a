"""The BidRequest a partner is sent, built once per request from the admitted one.

What a partner sees is what admission decided it may see: a contextual request (COPPA, GDPR
without consent, LMT, DNT: ``Admitted.privacy``) carries no user id, buyer id, device id or IP.
Floors go out in the partner's currency, converted from the fleet floors admission computed (an
imp whose floor we could not read is not offered). ``tmax`` is the time the partner is really
given. OpenRTB 2.5 partners get GDPR, consent and US privacy in the 2.5 ``ext`` places.
"""

from __future__ import annotations

import gzip as gz

import msgspec

from fleet.config import PartnerSpec


def _strip(obj):
    """Drop None values and empty containers: a partner gets the fields that say something."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = _strip(v)
            if v is None or v == [] or v == {}:
                continue
            out[k] = v
        return out
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


class Outbound:
    """The admitted request as builtins (once), and each partner's body from it."""

    __slots__ = ("base", "floors", "contextual")

    def __init__(self, req, floors: dict[str, float], privacy: str):
        self.base = _strip(msgspec.to_builtins(req))
        self.floors = floors  # imp id -> floor, fleet currency
        self.contextual = bool(privacy)

    def body(self, partner: PartnerSpec, tmax_ms: int, rate: float) -> tuple[bytes, dict[str, str]]:
        """(body, headers) for ``partner``; ``rate``: one unit of its currency in the fleet's."""
        req = dict(self.base)
        req["tmax"] = int(tmax_ms)
        req["cur"] = [partner.currency]
        imps = []
        for imp in req.get("imp", ()):
            floor = self.floors.get(imp.get("id"))
            if floor is None:
                continue
            imp = dict(imp)
            imp["bidfloor"] = round(floor / rate, 6)
            imp["bidfloorcur"] = partner.currency
            imps.append(imp)
        req["imp"] = imps
        if self.contextual:
            req.pop("user", None)
            dev = req.get("device")
            if dev is not None:
                req["device"] = {k: v for k, v in dev.items() if k not in ("ifa", "ip", "ipv6")}
        if partner.openrtb == "2.5":
            regs = dict(req.get("regs") or {})
            ext = {k: regs.pop(k) for k in ("gdpr", "us_privacy") if k in regs}
            if ext:
                regs["ext"] = {**regs.get("ext", {}), **ext}
                req["regs"] = regs
            user = req.get("user")
            if user is not None and "consent" in user:
                user = dict(user)
                user["ext"] = {**user.get("ext", {}), "consent": user.pop("consent")}
                req["user"] = user
        raw = msgspec.json.encode(req)
        headers = {"content-type": "application/json", "x-openrtb-version": partner.openrtb,
                   "accept-encoding": "identity"}
        if partner.gzip:
            raw = gz.compress(raw, compresslevel=1)
            headers["content-encoding"] = "gzip"
            headers["accept-encoding"] = "gzip"  # inflated by the client, with a bound
        return raw, headers
