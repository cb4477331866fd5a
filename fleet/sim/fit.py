"""Which creative may fill an imp, as the oracle reads the request: stated from OpenRTB 2.6 and
Native 1.2 and the fleet's documented serving rules, not taken from the fleet's code
(``tests/test_oracle.py`` holds this to agreement with ``fleet.pipeline.creative_fit``).

- banner: a size the imp offers (``format`` or ``w`` x ``h``; any when it names none, and a
  full-screen imp, ``instl: 1``, that names none takes the common full-screen sizes);
- video, audio: a mime the imp accepts, a duration within min and max (exactly one of
  ``rqddurs`` when given, no longer than a dynamic pod's ``poddur``), a VAST version the player
  takes (``protocols``: VAST 2.0 or later, in-line or wrapper), not skippable where the player
  will not skip (``skip: 0``);
- native: every required asset of the request filled (a title within ``len``; a main image of
  the asked size, exactly ``w`` x ``h`` or at least ``wmin`` x ``hmin``, the creative's own size
  or 1200 x 627; the sponsored-by data, the advertiser, within ``len``) and at least one asset;
- any: https creative URLs where the imp is ``secure``, none of the creative's attributes in the
  format's ``battr``, not the request's ``bcat`` (the creative's categories, else the
  campaign's), ``badv`` (the campaign's advertiser domains) or ``bapp`` (the advertised app).
"""

from __future__ import annotations

import json

from fleet.sim.catalog import Campaign, Creative

VAST_2_OR_LATER = {2, 3, 5, 6, 7, 8, 11, 12, 13, 14}  # OpenRTB protocols: VAST 2.0-4.2, in-line or wrapper
SKIPPABLE = 16  # creative attribute: user-initiated skippable
FULL_SCREEN = {(320, 480), (480, 320), (768, 1024), (1024, 768), (360, 640), (640, 360)}
NATIVE_IMAGE = (1200, 627)  # a native creative without a size of its own
MAIN_IMAGE, SPONSORED = 3, 1


def banner_sizes(imp: dict) -> set[tuple[int, int]]:
    """The banner's ``format`` sizes and its own ``w`` x ``h``."""
    b = imp.get("banner") or {}
    out = {(f.get("w") or 0, f.get("h") or 0) for f in b.get("format") or ()}
    if b.get("w") and b.get("h"):
        out.add((b["w"], b["h"]))
    return out


def _native_assets(native: dict) -> list[dict] | None:
    """The request's assets (1.2 at the root, 1.0/1.1 under ``native``), or None: unreadable."""
    raw = native.get("request")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw else None
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    body = raw["native"] if isinstance(raw.get("native"), dict) else raw
    assets = [a for a in body.get("assets") or () if isinstance(a, dict) and type(a.get("id")) is int] \
        if isinstance(body.get("assets"), list) else []
    if not assets or len({a["id"] for a in assets}) != len(assets):
        return None
    return assets


def _whole(v) -> int:
    return v if type(v) is int else int(v) if type(v) is float and v.is_integer() else 0


def _fills(a: dict, cr: Creative, c: Campaign) -> bool:
    title, img, data = (a.get(k) if isinstance(a.get(k), dict) else None for k in ("title", "img", "data"))
    if title is not None:
        n = _whole(title.get("len"))
        return bool(cr.title) and (not n or len(cr.title) <= n)
    if img is not None:
        if img.get("type") not in (None, MAIN_IMAGE) and type(img.get("type")) is int:
            return False
        w, h = (cr.w, cr.h) if cr.w and cr.h else NATIVE_IMAGE
        aw, ah = _whole(img.get("w")), _whole(img.get("h"))
        if aw and ah:
            return (w, h) == (aw, ah)
        return w >= _whole(img.get("wmin")) and h >= _whole(img.get("hmin"))
    if data is not None:
        n = _whole(data.get("len"))
        kind = data.get("type")
        return type(kind) is int and kind == SPONSORED and bool(c.advertiser) and (not n or len(c.advertiser) <= n)
    return False


def _native_fits(native: dict, cr: Creative, c: Campaign) -> bool:
    assets = _native_assets(native)
    if assets is None:
        return False
    filled = [_fills(a, cr, c) for a in assets]
    required = [a.get("required") in (1, True, "1") for a in assets]
    return any(filled) and all(f or not r for f, r in zip(filled, required))


def _media_fits(slot: dict, cr: Creative) -> bool:
    """(``skip`` is a video field: an audio object has none.)"""
    d = cr.duration_s
    mimes, protocols, durs = slot.get("mimes") or (), slot.get("protocols") or (), slot.get("rqddurs") or ()
    return not (
        (mimes and cr.mime not in mimes)
        or (protocols and not VAST_2_OR_LATER & set(protocols))
        or (slot.get("minduration") and d < slot["minduration"])
        or (slot.get("maxduration") and d > slot["maxduration"])
        or (durs and d not in durs)
        or (slot.get("poddur") and d > slot["poddur"])
        or (cr.format == "video" and slot.get("skip") == 0 and SKIPPABLE in cr.attr)
    )


def _https(cr: Creative) -> bool:
    return (cr.click_url.startswith("https://") and cr.media_url.startswith("https://")
            and (not cr.image_url or cr.image_url.startswith("https://")))


def fits(cr: Creative, c: Campaign, imp: dict, bcat=frozenset(), badv=frozenset(), bapp=frozenset()) -> bool:
    """``cr`` of campaign ``c`` may fill ``imp`` of a request with these block lists."""
    slot = imp.get(cr.format)
    if slot is None:
        return False
    if cr.format == "banner":
        sizes = banner_sizes(imp) or (FULL_SCREEN if imp.get("instl") == 1 else set())
        if sizes and (cr.w, cr.h) not in sizes:
            return False
    elif cr.format == "native":
        if not _native_fits(slot, cr, c):
            return False
    elif not _media_fits(slot, cr):
        return False
    if imp.get("secure") == 1 and not _https(cr):
        return False
    if set(slot.get("battr") or ()) & set(cr.attr):
        return False
    if set(bcat) & set(cr.cat or c.cat) or set(badv) & set(c.adomain):
        return False
    return not (cr.bundle is not None and cr.bundle in bapp)
