"""VAST markup for video and audio bids, in the version the player said it plays.

The version comes from the imp's ``protocols`` (OpenRTB/AdCOM "Creative Subtypes - Audio/Video"):
the highest VAST version listed that this module writes. A wrapper variant (5, 6, 8, 12, 14)
counts as its version: a player that follows a version's wrappers plays its in-line ads. An imp
that lists protocols but none of these (VAST 1.0, DAAST only) cannot play our markup: no bid
(``fleet.pipeline.creative_fit``). Without ``protocols`` we write 4.0 for video, 4.1 for audio
(the first version with ``adType="audio"``).

The markup is an in-line ad with our billing notice as its ``<Impression>`` (the bill is counted
once per bid however many times it comes: the exchange's ``burl`` and the player's pixel are the
same notice), the creative's duration and mime type, its click-through and our click notice as
``<ClickTracking>``. 4.x adds ``<UniversalAdId>``, 4.1+ ``<AdServingId>`` (the bid id).
"""

from __future__ import annotations

from html import escape

from fleet.campaigns.model import Creative

VERSIONS = ("2.0", "3.0", "4.0", "4.1", "4.2")  # the versions written, oldest first
# protocol id -> the index in VERSIONS of the version written for it
PROTOCOLS = {2: 0, 5: 0, 3: 1, 6: 1, 7: 2, 8: 2, 11: 3, 12: 3, 13: 4, 14: 4}
DEFAULT = {"video": "4.0", "audio": "4.1"}


def vast_version(protocols: list[int], fmt: str) -> str | None:
    """The VAST version to write for an imp's ``protocols``; None: none we write."""
    if not protocols:
        return DEFAULT[fmt]
    best = max((PROTOCOLS.get(p, -1) for p in protocols), default=-1)
    return VERSIONS[best] if best >= 0 else None


def duration(seconds: int) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _cdata(url: str) -> str:
    return "<![CDATA[" + url.replace("]]>", "]]%3E") + "]]>"


def vast(cr: Creative, version: str, *, impression: str, click_notice: str | None, serving_id: str) -> str:
    """In-line VAST ``version`` for a video or audio creative."""
    v4 = version.startswith("4")
    v41 = v4 and version != "4.0"
    audio = cr.format == "audio"
    size = "" if audio else f' width="{cr.w}" height="{cr.h}"'
    media = (f'<MediaFiles><MediaFile delivery="progressive" type="{escape(cr.mime)}"{size}>'
             f"{_cdata(cr.media_url)}</MediaFile></MediaFiles>")
    clicks = ("<VideoClicks><ClickThrough>" + _cdata(cr.click_url) + "</ClickThrough>"
              + (f"<ClickTracking>{_cdata(click_notice)}</ClickTracking>" if click_notice else "")
              + "</VideoClicks>")
    dur = f"<Duration>{duration(cr.duration_s)}</Duration>"
    # VAST 2's schema orders VideoClicks before MediaFiles; 3 and 4 the other way round
    linear = dur + (clicks + media if version == "2.0" else media + clicks)
    uid = ""
    if v4:
        uid = (f'<UniversalAdId idRegistry="unknown">{escape(cr.id)}</UniversalAdId>' if v41 else
               f'<UniversalAdId idRegistry="unknown" idValue="unknown">{escape(cr.id)}</UniversalAdId>')
    ad_type = f' adType="{"audio" if audio else "video"}"' if v41 else ""
    return (
        f'<VAST version="{version}"><Ad id="{escape(cr.id)}"{ad_type}><InLine>'
        "<AdSystem>fleet</AdSystem>"
        + (f"<AdServingId>{escape(serving_id)}</AdServingId>" if v41 else "")
        + f"<AdTitle>{escape(cr.title or cr.id)}</AdTitle>"
        f'<Impression id="fleet">{_cdata(impression)}</Impression>'
        f'<Creatives><Creative id="{escape(cr.id)}">{uid}<Linear>{linear}</Linear></Creative></Creatives>'
        "</InLine></Ad></VAST>"
    )
