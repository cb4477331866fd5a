"""Decoding and encoding of OpenRTB bodies: size caps, gzip, typed decode, semantic checks.

Everything that can go wrong with a body becomes a ``RequestError`` carrying the HTTP status and
the no-bid reason, so the ingress never turns bad input into a 5xx.
"""

from __future__ import annotations

import gzip
import math
import zlib

import msgspec

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


def decode_request(body: bytes, content_encoding: str | None, max_bytes: int) -> BidRequest:
    if len(body) > max_bytes:
        raise RequestError(413, "body over the size limit")
    if content_encoding and "gzip" in content_encoding.lower():
        body = inflate(body, max_bytes)
    if not body:
        raise RequestError(400, "empty body")
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(400, f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"not JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 lazily, in the string fields it decodes
        raise RequestError(400, "not UTF-8") from None
    validate(req)
    return req


def _finite(value: float, where: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise RequestError(400, f"{where} must be a finite non-negative number")


def validate(req: BidRequest) -> None:
    """The semantic rules msgspec's types cannot say: the ones section 3 calls required."""
    if not req.id:
        raise RequestError(400, "request id is empty")
    if not req.imp:
        raise RequestError(400, "request has no imp")
    seen: set[str] = set()
    for n, imp in enumerate(req.imp):
        if not imp.id:
            raise RequestError(400, f"imp[{n}] has an empty id")
        if imp.id in seen:
            raise RequestError(400, f"imp id {imp.id!r} repeated")
        seen.add(imp.id)
        if imp.banner is None and imp.video is None and imp.native is None and imp.audio is None:
            raise RequestError(400, f"imp[{n}] has none of banner/video/native/audio")
        _finite(imp.bidfloor, f"imp[{n}].bidfloor")
        if imp.pmp is not None:
            for deal in imp.pmp.deals:
                _finite(deal.bidfloor, f"imp[{n}].pmp deal {deal.id!r} bidfloor")
    if req.site is not None and req.app is not None:
        raise RequestError(400, "request has both site and app")
    if req.tmax is not None and req.tmax < 0:
        raise RequestError(400, "tmax is negative")


def encode_response(resp: BidResponse) -> bytes:
    return _encoder.encode(resp)


def encode_response_error(reason: str, nbr: int) -> bytes:
    return _encoder.encode({"error": reason, "nbr": int(nbr)})


def maybe_gzip(body: bytes, accept_encoding: str | None, min_size: int = 512) -> tuple[bytes, bool]:
    """Gzip the response when the exchange accepts it and it is worth the CPU."""
    if accept_encoding and "gzip" in accept_encoding.lower() and len(body) >= min_size:
        return gzip.compress(body, compresslevel=1), True
    return body, False
