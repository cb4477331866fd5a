"""Decoding and encoding of OpenRTB bodies: size caps, gzip, typed decode, semantic checks.

Everything that can go wrong with a body becomes a ``RequestError`` carrying the HTTP status and
the no-bid reason, so the ingress never turns bad input into a 5xx. A 400 is kept for what the
bidder cannot do without (``validate``, ``fleet.openrtb.tolerant.REQUIRED``); a wrong optional
field is coerced or dropped and counted, and the request goes on (``docs/openrtb.md``).
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from collections import Counter

import msgspec

from fleet.openrtb import tolerant
from fleet.openrtb.model import BidRequest, BidResponse
from fleet.openrtb.nbr import NBR

SUPPORTED_VERSIONS = ("2.5", "2.6")


class RequestError(Exception):
    """A request the bidder refuses before doing any work on it."""

    def __init__(self, status: int, reason: str, nbr: NBR = NBR.INVALID_REQUEST):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.nbr = nbr


_decoder = msgspec.json.Decoder(BidRequest)
_encoder = msgspec.json.Encoder()


def check_version(header: str | None) -> str:
    """Accept 2.x requests; a missing header is read as 2.5 (the last version without it)."""
    if not header:
        return "2.5"
    version = header.strip()
    major_minor = ".".join(version.split(".")[:2])
    if major_minor in SUPPORTED_VERSIONS:
        return major_minor
    if version.startswith("2."):
        return "2.6"  # a later 2.x minor is backwards compatible by the spec's own rule
    raise RequestError(400, f"unsupported x-openrtb-version {version!r}")


def inflate(body: bytes, max_bytes: int) -> bytes:
    """Gunzip with a cap on the decompressed size (a small bomb must not eat the replica)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise RequestError(400, f"bad gzip body: {exc}") from None
    if len(out) > max_bytes:
        raise RequestError(413, "decompressed body over the size limit")
    if not d.eof:
        raise RequestError(400, "truncated gzip body")
    return out


def decode_request(body: bytes, content_encoding: str | None, max_bytes: int,
                   counts: Counter | None = None) -> BidRequest:
    """The request, read strictly (the fast path) or, when the strict read fails, tolerantly
    (``fleet.openrtb.tolerant``). ``counts`` gets ``tolerated.<what>`` for every field coerced
    or dropped and every rule bent (see ``validate``)."""
    if len(body) > max_bytes:
        raise RequestError(413, "body over the size limit")
    if content_encoding and "gzip" in content_encoding.lower():
        body = inflate(body, max_bytes)
    if not body:
        raise RequestError(400, "empty body")
    repairs: list[tuple[str, str]] = []
    try:
        try:
            req = _decoder.decode(body)
        except msgspec.ValidationError:
            req, repairs = tolerant.repair(body, BidRequest)
    except tolerant.Unreadable as exc:
        raise RequestError(400, f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"not JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 lazily, in the string fields it decodes
        raise RequestError(400, "not UTF-8") from None
    bent = validate(req)
    if counts is not None:
        for action, path in repairs:
            counts[f"tolerated.{action}.{path}"] += 1
        for what in bent:
            counts[f"tolerated.{what}"] += 1
    return req


def _readable_floor(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def validate(req: BidRequest) -> list[str]:
    """The rules msgspec's types cannot say. A 400 only for what section 3 requires and the
    bidder cannot do without: a request id, at least one imp, an id on every imp. Otherwise it
    bends, and returns what it bent:
    - a repeated imp id: the first imp is bid on, the rest dropped (``imp.duplicate_id``);
    - an imp with none of banner/video/native/audio, or a floor that is not a finite
      non-negative number, is dropped (``imp.no_media``, ``imp.bad_floor``); a deal with such a
      floor likewise (``deal.bad_floor``); a request left with no imp is a 400;
    - both ``site`` and ``app``: read as app (``fleet.openrtb.inventory``), ``site_and_app``;
    - a negative ``tmax`` is dropped (the region's default applies), ``tmax.negative``.
    """
    if not req.id:
        raise RequestError(400, "request id is empty")
    if not req.imp:
        raise RequestError(400, "request has no imp")
    bent: list[str] = []
    keep: list | None = None  # built only when an imp is dropped (the fast path builds nothing)
    seen: set[str] = set()
    first_reason = ""
    for n, imp in enumerate(req.imp):
        if not imp.id:
            raise RequestError(400, f"imp[{n}] has an empty id")
        why = ""
        if imp.id in seen:
            why = "imp.duplicate_id"
        elif imp.banner is None and imp.video is None and imp.native is None and imp.audio is None:
            why = "imp.no_media"
            first_reason = first_reason or f"imp[{n}] has none of banner/video/native/audio"
        elif not _readable_floor(imp.bidfloor):
            why = "imp.bad_floor"
            first_reason = first_reason or f"imp[{n}].bidfloor must be a finite non-negative number"
        if why:
            bent.append(why)
            if keep is None:
                keep = req.imp[:n]
            continue
        seen.add(imp.id)
        if imp.pmp is not None and imp.pmp.deals and not all(_readable_floor(d.bidfloor) for d in imp.pmp.deals):
            imp.pmp.deals = [d for d in imp.pmp.deals if _readable_floor(d.bidfloor)]
            bent.append("deal.bad_floor")
        if keep is not None:
            keep.append(imp)
    if keep is not None:
        if not keep:
            raise RequestError(400, first_reason or "request has no imp the bidder can read")
        req.imp = keep
    if req.site is not None and req.app is not None:
        bent.append("site_and_app")
    if req.tmax is not None and req.tmax < 0:
        req.tmax = None
        bent.append("tmax.negative")
    return bent


def encode_response(resp: BidResponse) -> bytes:
    return _encoder.encode(resp)


def encode_response_error(reason: str, nbr: int) -> bytes:
    return _encoder.encode({"error": reason, "nbr": int(nbr)})


# Under one TCP segment's payload a body leaves in one packet either way: compressing it saves no
# packet and costs ~20 us. A bid response with signed notice URLs is 2-8 KB (gzip level 1: 25-40
# us, 60-75% smaller), so every bid is still compressed when the exchange asks.
GZIP_MIN_BYTES = 1_400


@functools.lru_cache(maxsize=256)
def accepts_gzip(accept_encoding: str) -> bool:
    """RFC 9110 section 12.5.3: ``gzip`` (or ``x-gzip``) listed with a non-zero q, or ``*`` with a
    non-zero q when gzip is not listed itself (``gzip;q=0`` refuses it). Exchanges send the same
    header every time: cached."""
    named, star = None, False
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip()
        q = 1.0
        for param in params.split(";"):
            k, _, v = param.partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    pass  # an unreadable weight: the coding is still listed
        if coding in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif coding == "*":
            star = q > 0
    return named > 0 if named is not None else star


def maybe_gzip(body: bytes, accept_encoding: str | None, min_size: int = GZIP_MIN_BYTES) -> tuple[bytes, bool]:
    """Gzip the response when the exchange accepts it and it is worth the CPU."""
    if accept_encoding and len(body) >= min_size and accepts_gzip(accept_encoding):
        return gzip.compress(body, compresslevel=1), True
    return body, False
