"""Native markup: the request's assets read once, filled from the catalog, or no bid.

``imp.native.request`` is a JSON string (the spec) or, from some exchanges, the object itself;
both are read, as is the 1.0/1.1 wrapping (``{"native": {...}}``). The response follows the
request: Native 1.2 (or no version said) answers with the native response object itself at the
root, 1.0/1.1 wraps it in ``{"native": ...}`` as those versions did.

Assets are filled only under the ids the request asked for, never others:
- ``title``: the creative's title, if it fits the asset's ``len``;
- ``img``: the creative's image, for a main image (type 3, or no type) whose size it meets
  (exactly ``w``x``h`` when given, else at least ``wmin``x``hmin``); there is no icon in the catalog;
- ``data``: type 1 (sponsored by: the campaign's advertiser) within ``len``; no other data type;
- ``video``: none in the catalog.
An asset that cannot be filled is left out when optional; when it is required (``required: 1``),
or when nothing at all could be filled, the creative does not fit the imp (no bid for it), and an
unreadable request is never filled.

Trackers: the click notice in ``link.clicktrackers``; the billing notice as the impression
tracker, in ``eventtrackers`` (event 1, image) when the request offers that, else ``imptrackers``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import msgspec

from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb.model import Native

MAIN_IMAGE, ICON = 3, 1
SPONSORED = 1
DEFAULT_IMAGE = (1200, 627)


@dataclass(frozen=True, slots=True)
class Asset:
    id: int
    required: bool
    kind: str  # title | img | data | video | other
    len: int = 0
    type: int | None = None
    w: int = 0
    h: int = 0
    wmin: int = 0
    hmin: int = 0


@dataclass(frozen=True, slots=True)
class NativeSpec:
    assets: tuple[Asset, ...]
    wrapped: bool  # answer in the 1.0/1.1 wrapping
    ver: str
    event_trackers: bool  # the request takes impression trackers in eventtrackers (event 1, image)


def _int(v) -> int:
    return v if type(v) is int else int(v) if type(v) is float and v.is_integer() else 0


def _asset(a: dict) -> Asset | None:
    aid = a.get("id")
    if type(aid) is not int:
        return None
    req = a.get("required") in (1, True, "1")
    for kind in ("title", "img", "data", "video"):
        o = a.get(kind)
        if isinstance(o, dict):
            t = o.get("type")
            return Asset(aid, req, kind, _int(o.get("len")), t if type(t) is int else None, _int(o.get("w")),
                         _int(o.get("h")), _int(o.get("wmin")), _int(o.get("hmin")))
    return Asset(aid, req, "other")


def native_spec(native: Native | None) -> NativeSpec | None:
    """The request's native spec, or None when it cannot be read (no bid: no asset ids to use).
    An exchange sends the same few request strings again and again: those are read once."""
    if native is None:
        return None
    raw = native.request
    if isinstance(raw, str):
        return _cached(raw, native.ver) if len(raw) <= CACHED_MAX else _read_text(raw, native.ver)
    return _read(raw, native.ver)


CACHED_MAX = 4096  # longer request strings are read each time (the cache stays small)


@functools.lru_cache(maxsize=512)
def _cached(raw: str, ver: str | None) -> NativeSpec | None:
    return _read_text(raw, ver)


def _read_text(raw: str, ver: str | None) -> NativeSpec | None:
    if not raw:
        return None
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # the exchange's string
        return None
    return _read(obj, ver)


def _read(raw, native_ver: str | None) -> NativeSpec | None:
    if not isinstance(raw, dict):
        return None
    wrapped = isinstance(raw.get("native"), dict)
    body = raw["native"] if wrapped else raw
    ver = body.get("ver") if isinstance(body.get("ver"), str) else (native_ver or "1.2")
    wrapped = wrapped or ver.strip() in ("1", "1.0", "1.1")
    items = body.get("assets")
    assets = tuple(a for a in (_asset(x) for x in items if isinstance(x, dict)) if a is not None) \
        if isinstance(items, list) else ()
    if not assets or len({a.id for a in assets}) != len(assets):
        return None
    trackers = body.get("eventtrackers")
    events = isinstance(trackers, list) and any(
        isinstance(t, dict) and t.get("event") == 1 and 1 in (t.get("methods") or [])
        for t in trackers)
    return NativeSpec(assets, wrapped, ver, events)


def fill(spec: NativeSpec, cr: Creative, campaign: Campaign) -> list[dict] | None:
    """The response assets for ``cr``, under the request's ids; None when it cannot fill them."""
    out = []
    for a in spec.assets:
        filled = None
        if a.kind == "title":
            text = cr.title
            if text and (not a.len or len(text) <= a.len):
                filled = {"id": a.id, "title": {"text": text}}
        elif a.kind == "img" and a.type in (None, MAIN_IMAGE):
            w, h = (cr.w, cr.h) if cr.w and cr.h else DEFAULT_IMAGE
            if (a.w and a.h and (w, h) == (a.w, a.h)) or (not (a.w and a.h) and w >= a.wmin and h >= a.hmin):
                url = cr.image_url or f"https://cdn.advertiser.example/{cr.id}.png"
                filled = {"id": a.id, "img": {"url": url, "w": w, "h": h}}
        elif a.kind == "data" and a.type == SPONSORED:
            text = campaign.advertiser
            if text and (not a.len or len(text) <= a.len):
                filled = {"id": a.id, "data": {"value": text}}
        if filled is not None:
            out.append(filled)
        elif a.required:
            return None
    return out or None


def native_markup(spec: NativeSpec, assets: list[dict], cr: Creative, *, click_notice: str | None,
                  impression: str | None) -> str:
    link: dict = {"url": cr.click_url}
    if click_notice:
        link["clicktrackers"] = [click_notice]
    obj: dict = {"ver": "1.2" if not spec.wrapped else spec.ver, "assets": assets, "link": link}
    if impression:
        if spec.event_trackers:
            obj["eventtrackers"] = [{"event": 1, "method": 1, "url": impression}]
        else:
            obj["imptrackers"] = [impression]
    return msgspec.json.encode({"native": obj} if spec.wrapped else obj).decode()
