"""Whose inventory a request offers: the one definition of its publisher and its domain.

Admission's block lists, targeting's allow and deny lists, the model's features, the win-rate
model's key and the publisher signed into notice URLs all read these two, computed once per
request (``inventory``) and carried on the admitted request.

- publisher: ``publisher.id`` of the site or app (a request naming both is read as an app), else
  the site's or app's own ``id``;
- domain: the site's ``domain``, an app's ``bundle`` (else its ``domain``), else the publisher's
  ``domain``; lower case;
- names: every domain the request names for it (the site's or app's domain, an app's bundle, the
  publisher's domain), lower case: a block list refuses the request when any of them is listed,
  so an app is not let through by its bundle when its domain is blocked.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.openrtb.model import BidRequest


@dataclass(frozen=True, slots=True)
class Inventory:
    publisher: str | None
    domain: str | None
    names: tuple[str, ...] = ()


NONE = Inventory(None, None)


def inventory(req: BidRequest) -> Inventory:
    # A request with both (the spec says it should not; exchanges send it) is read as an app,
    # and the site's domains are named too, so a block list sees them.
    inv = req.app if req.app is not None else req.site
    if inv is None:
        return NONE
    pub = inv.publisher
    publisher = pub.id if pub is not None and pub.id else inv.id
    domain = (req.app.bundle or req.app.domain) if req.app is not None else req.site.domain
    if not domain and pub is not None:
        domain = pub.domain
    named = [inv.domain, getattr(inv, "bundle", None), pub.domain if pub is not None else None]
    if req.app is not None and req.site is not None:
        spub = req.site.publisher
        named += [req.site.domain, spub.domain if spub is not None else None]
    names = tuple(n.lower() for n in named if n)
    return Inventory(publisher, domain.lower() if domain else None, names)
