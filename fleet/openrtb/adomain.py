"""Advertiser domains against a request's ``badv``: the one definition of "this advertiser is blocked".

Both sides are normalised as Prebid Server normalises them (``normalizeDomain``): spaces trimmed,
lower case, a scheme, user, path, port and one leading ``www.`` dropped. A bid's (or campaign's)
domain is blocked by a ``badv`` entry when it *is* that domain or a subdomain of it, label by
label: ``example.co.uk`` blocks ``example.co.uk`` and ``ads.example.co.uk``, never
``other.co.uk`` or ``myexample.co.uk`` (a shared suffix is not a shared advertiser). A ``badv``
entry that is itself a public suffix (``co.uk``, ``com``) is ignored, as Prebid Server ignores
it: it names no advertiser, and honouring it would block every advertiser registered under it.

No public suffix list is installed (neither ``tldextract`` nor ``publicsuffix2`` is a
dependency), so "public suffix" is this small rule: one label (a top-level domain: ``com``,
``uk``), or two labels, a generic second-level label that registries put names under (``co``,
``com``, ``net``, ``org``, ``gov``, ``edu``, ``ac``, ...) and a two-letter country code:
``co.uk``, ``com.au``, ``co.jp``, ``org.uk``. A suffix outside the rule (``blogspot.com``, a
three-label one) counts as a domain: an entry naming it blocks the names under it, the safe side
(a block honoured too widely costs a bid; one missed shows a blocked advertiser's ad). The rule's
one miss the other way: a country where such a pair is itself registrable (``co.de``) has a block
of exactly that name ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "gob", "go", "gov", "ltd", "me", "mil", "ne", "net",
                          "nhs", "nic", "or", "org", "plc", "sch"})


def normalize(domain: str) -> str:
    """``https://WWW.Example.co.uk:443/x`` -> ``example.co.uk``; "" for nothing usable."""
    d = domain.strip().lower()
    if "://" in d:
        d = d.split("://", 1)[1]
    for sep in ("/", "?", "#"):
        d = d.split(sep, 1)[0]
    d = d.rsplit("@", 1)[-1].split(":", 1)[0].strip(".")
    return d[4:] if d.startswith("www.") else d


def is_public_suffix(domain: str) -> bool:
    """A normalised name that no advertiser can register as a whole (the rule above)."""
    labels = domain.split(".")
    if len(labels) == 1:
        return True
    return len(labels) == 2 and labels[0] in SECOND_LEVEL and len(labels[1]) == 2 and labels[1].isalpha()


class AdvertiserBlock:
    """A request's ``badv``, read once; ``blocks(adomain)`` per bid or campaign."""

    __slots__ = ("entries",)

    def __init__(self, badv: Iterable[str]):
        names = (normalize(d) for d in badv)
        self.entries = frozenset(n for n in names if n and not is_public_suffix(n))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def blocked(self, domain: str) -> bool:
        """``domain`` is an entry or a subdomain of one."""
        d = normalize(domain)
        while d:
            if d in self.entries:
                return True
            d = d.partition(".")[2]
        return False

    def blocks(self, adomain: Iterable[str]) -> bool:
        """Any of an advertiser's domains is blocked."""
        return bool(self.entries) and any(self.blocked(d) for d in adomain)
