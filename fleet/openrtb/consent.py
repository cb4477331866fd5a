"""Privacy strings as exchanges send them, decoded: TCF v2, GPP, US privacy (CCPA) and US National.

Only reading lives here; what the fleet does with what it read is ``fleet.pipeline.privacy``.
Every decoder answers ``None`` for a string it cannot read, never raises: the caller counts an
unreadable string as no consent. Strings repeat (one user's string on every one of their
requests, an exchange's stock strings), so each decoder keeps an LRU of its answers keyed by the
string; an answer is a few small fields, not the decoded string, so the cache stays small.

TCF v2 is read here, per the TC string specification, for the one vendor the fleet is, rather
than by the ``iab-tcf`` package (the tests' reference decoder, which must agree on every string
they build): the package decodes every vendor bit into a dict (about 0.6 ms for a real
455-character string, 6.5 ms for a forged 3.7 KiB one, against 17 us and 92 us here:
``python -m fleet.bench.privacy``), and its reader reads bits past the end of a short string
as set, so a truncated string would consent to every vendor. Here a string is
strict web-safe base64, version 2, read only as far as our vendor's bits and the publisher
restrictions, and refused whole when any field runs past its end.
"""

from __future__ import annotations

import functools
import re

import msgspec

MAX_CHARS = 4096  # longer privacy strings are not decoded (count as no consent; real ones are under 2 KiB)
CACHE = 4096  # decoded strings kept per decoder
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_PURPOSES_AT = 152  # bit offset of a TC string's PurposesConsent (fixed-width fields before it)
_SIX = {ch: format(i, "06b") for i, ch in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}

# GPP section ids (the GPP section registry)
GPP_TCF_EU = 2
GPP_USP = 6
GPP_US_NATIONAL = 7


class Tcf(msgspec.Struct, frozen=True):
    """What a TC string says about one vendor: purposes by consent and by legitimate interest
    (after the publisher's restrictions for that vendor), and the vendor's own consent and
    legitimate-interest bits."""

    purposes: frozenset[int]
    li_purposes: frozenset[int]
    vendor: bool
    vendor_li: bool


class UsNational(msgspec.Struct, frozen=True):
    """The opt-outs of a GPP US National section (1: opted out, 2: did not, 0: not applicable)."""

    sale: int
    sharing: int
    targeted: int

    @property
    def opted_out(self) -> bool:
        return 1 in (self.sale, self.sharing, self.targeted)


class _Short(Exception):
    """A field runs past the end of its segment."""


class Reader:
    """Fields of a web-safe base64 segment, read in order (big-endian bit fields)."""

    __slots__ = ("bits", "at")

    def __init__(self, bits: str):
        self.bits = bits
        self.at = 0

    @classmethod
    def of(cls, segment: str) -> Reader | None:
        """Strictly (the standard decoder silently skips characters it does not know), and of
        any length (GPP pads to 6 bits, not to bytes)."""
        if not _B64URL.fullmatch(segment):
            return None
        return cls("".join(map(_SIX.__getitem__, segment)))

    def take(self, width: int) -> int:
        end = self.at + width
        if end > len(self.bits):
            raise _Short
        value = int(self.bits[self.at:end], 2)
        self.at = end
        return value

    def skip(self, width: int) -> int:
        """Step over ``width`` bits; where they started."""
        start = self.at
        if start + width > len(self.bits):
            raise _Short
        self.at = start + width
        return start

    def fibonacci(self) -> int:
        """A Fibonacci-coded integer (its last bit and the one before it are set)."""
        value, prev, a, b = 0, 0, 1, 2
        for _ in range(32):
            bit = self.take(1)
            if bit and prev:
                return value
            if bit:
                value += a
            prev = bit
            a, b = b, a + b
        raise _Short


def _ranges_hold(r: Reader, vendor_id: int) -> bool:
    """Read a range list (NumEntries, then IsARange, Start[, End] each): is ``vendor_id`` in it?
    (Inlined reads: a forged string may carry thousands of entries.)"""
    n = r.take(12)
    bits, at, size, found = r.bits, r.at, len(r.bits), False
    for _ in range(n):
        if bits[at:at + 1] == "1":
            if at + 33 > size:
                raise _Short
            lo, hi = int(bits[at + 1:at + 17], 2), int(bits[at + 17:at + 33], 2)
            at += 33
        else:
            if at + 17 > size:
                raise _Short
            lo = hi = int(bits[at + 1:at + 17], 2)
            at += 17
        found = found or lo <= vendor_id <= hi
    r.at = at
    return found


def _vendor_section(r: Reader, vendor_id: int) -> bool:
    """Read a vendor section (MaxVendorId, IsRangeEncoding, a bitfield or a range list): is
    ``vendor_id`` set?"""
    top = r.take(16)
    if r.take(1):
        return _ranges_hold(r, vendor_id)
    start = r.skip(top)
    return 1 <= vendor_id <= top and r.bits[start + vendor_id - 1] == "1"


def _ids(bits: str) -> set[int]:
    """A bitfield's set ids (the first bit is id 1)."""
    return {i + 1 for i, bit in enumerate(bits) if bit == "1"}


@functools.lru_cache(maxsize=CACHE)
def tcf(consent: str, vendor_id: int) -> Tcf | None:
    """A TCF v2 consent string read for ``vendor_id``, or None when it does not decode."""
    if not consent or len(consent) > MAX_CHARS:
        return None
    r = Reader.of(consent.split(".", 1)[0].rstrip("="))
    if r is None:
        return None
    try:
        if r.take(6) != 2:
            return None
        r.skip(_PURPOSES_AT - 6)  # created, updated, CMP, screen, language, list and policy versions
        purposes = _ids(r.bits[r.skip(24):r.at])
        li = _ids(r.bits[r.skip(24):r.at])
        r.skip(1 + 12)  # purpose one treatment, publisher country
        vendor = _vendor_section(r, vendor_id)
        vendor_li = _vendor_section(r, vendor_id)
        for _ in range(r.take(12)):  # publisher restrictions
            purpose, kind = r.take(6), r.take(2)
            if _ranges_hold(r, vendor_id):
                if kind == 0:  # purpose flatly not allowed for this vendor
                    purposes.discard(purpose)
                    li.discard(purpose)
                elif kind == 1:  # consent required: legitimate interest does not count
                    li.discard(purpose)
                elif kind == 2:  # legitimate interest required
                    purposes.discard(purpose)
    except _Short:
        return None
    return Tcf(frozenset(purposes), frozenset(li), vendor, vendor_li)


@functools.lru_cache(maxsize=CACHE)
def gpp(string: str) -> dict[int, str] | None:
    """A GPP string's sections by id (header: type 3, version 1, a Fibonacci range of section
    ids; then one ``~``-separated section per id, in order), or None when it does not decode."""
    if not string or len(string) > MAX_CHARS:
        return None
    parts = string.split("~")
    r = Reader.of(parts[0])
    if r is None:
        return None
    ids: list[int] = []
    try:
        if r.take(6) != 3 or r.take(6) != 1:
            return None
        last = 0
        for _ in range(r.take(12)):
            ranged = r.take(1)
            start = last + r.fibonacci()
            end = start + r.fibonacci() if ranged else start
            if end - start > 64 or len(ids) > 64:
                return None
            ids.extend(range(start, end + 1))
            last = end
    except _Short:
        return None
    if len(ids) != len(parts) - 1:
        return None
    return dict(zip(ids, parts[1:]))


@functools.lru_cache(maxsize=CACHE)
def us_national(section: str) -> UsNational | None:
    """The opt-outs of a GPP US National section (core segment, versions 1 and 2), or None."""
    if not section or len(section) > MAX_CHARS:
        return None
    r = Reader.of(section.split(".", 1)[0])
    if r is None:
        return None
    try:
        if r.take(6) not in (1, 2):
            return None
        r.skip(12)  # six notices
        return UsNational(r.take(2), r.take(2), r.take(2))
    except _Short:
        return None


def us_privacy(string: str) -> bool | None:
    """A US privacy (CCPA) string's opt-out of sale: True/False, or None when it is not a
    version-1 string (``1`` then three of ``Y``, ``N``, ``-``)."""
    if len(string) != 4 or string[0] != "1" or any(ch not in "YN-" for ch in string[1:]):
        return None
    return string[2] == "Y"
