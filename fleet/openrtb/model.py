"""OpenRTB 2.5/2.6 wire model: only the fields the bidder reads.

msgspec structs ignore unknown fields (the spec asks bidders to be tolerant). A wrong type in a
field declared here fails the strict decode, and the codec then reads the body tolerantly
(``fleet.openrtb.tolerant``: coerced, or dropped to the default given here, and counted); only
the fields the bidder cannot do without make a 400 (``docs/openrtb.md``). Enumerated values are
plain ints so an unknown enum value is carried, not rejected. Defaults follow the spec.
"""

from __future__ import annotations

import msgspec


class Dsa(msgspec.Struct, omit_defaults=True):
    """``regs.ext.dsa``: 0 no DSA transparency needed, 1 supported, 2 required, 3 required and the
    publisher is an online platform."""

    dsarequired: int | None = None
    pubrender: int | None = None  # 0: the publisher cannot render the DSA notice, 1: could, 2: will


class SupplyChainNode(msgspec.Struct, omit_defaults=True):
    asi: str = ""  # the seller's advertising system (its domain)
    sid: str = ""  # the seller's id in that system (its sellers.json)
    hp: int | None = None  # 1: this node handled the payment


class SupplyChain(msgspec.Struct, omit_defaults=True):
    """``source.schain`` (2.6) / ``source.ext.schain`` (2.5): every hop that sold this impression."""

    complete: int = 0
    nodes: list[SupplyChainNode] = []
    ver: str | None = None


class Ext(msgspec.Struct, omit_defaults=True):
    """The ``ext`` objects the bidder reads (2.5 carried GDPR and consent here)."""

    gdpr: int | None = None
    consent: str | None = None
    us_privacy: str | None = None
    dsa: Dsa | None = None  # regs.ext.dsa (the IAB DSA transparency extension)
    schain: SupplyChain | None = None  # source.ext.schain (2.5 placement)


class Format(msgspec.Struct):
    w: int = 0
    h: int = 0


class Banner(msgspec.Struct):
    w: int | None = None
    h: int | None = None
    format: list[Format] = []
    battr: list[int] = []
    pos: int | None = None

    def sizes(self) -> list[tuple[int, int]]:
        out = [(f.w, f.h) for f in self.format]
        if self.w and self.h and (self.w, self.h) not in out:
            out.append((self.w, self.h))
        return out


class Video(msgspec.Struct):
    mimes: list[str] = []
    minduration: int | None = None
    maxduration: int | None = None
    protocols: list[int] = []
    w: int | None = None
    h: int | None = None
    battr: list[int] = []
    placement: int | None = None
    plcmt: int | None = None
    startdelay: int | None = None
    skip: int | None = None
    # 2.6 pods: exact durations asked for, the pod's total, ads per pod, the slot's position
    rqddurs: list[int] = []
    poddur: int | None = None
    maxseq: int | None = None
    podid: str | None = None
    slotinpod: int | None = None


class Audio(msgspec.Struct):
    mimes: list[str] = []
    minduration: int | None = None
    maxduration: int | None = None
    protocols: list[int] = []
    battr: list[int] = []
    startdelay: int | None = None
    rqddurs: list[int] = []
    poddur: int | None = None
    maxseq: int | None = None
    podid: str | None = None
    slotinpod: int | None = None


class Native(msgspec.Struct):
    request: str | dict = ""  # a JSON string (the spec) or, from some exchanges, the object itself
    ver: str | None = None
    battr: list[int] = []


class Deal(msgspec.Struct):
    id: str
    bidfloor: float = 0.0
    bidfloorcur: str = "USD"
    at: int | None = None
    wseat: list[str] = []


class Pmp(msgspec.Struct):
    private_auction: int = 0
    deals: list[Deal] = []


class Imp(msgspec.Struct):
    id: str
    banner: Banner | None = None
    video: Video | None = None
    audio: Audio | None = None
    native: Native | None = None
    pmp: Pmp | None = None
    tagid: str | None = None
    bidfloor: float = 0.0
    bidfloorcur: str = "USD"
    instl: int = 0
    secure: int | None = None
    exp: float | None = None  # seconds the exchange may take from auction to impression (advisory)

    def formats(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, obj in (
                ("banner", self.banner),
                ("video", self.video),
                ("native", self.native),
                ("audio", self.audio),
            )
            if obj is not None
        )


class Publisher(msgspec.Struct):
    id: str | None = None
    name: str | None = None
    domain: str | None = None


class Site(msgspec.Struct):
    id: str | None = None
    domain: str | None = None
    page: str | None = None
    cat: list[str] = []
    publisher: Publisher | None = None


class App(msgspec.Struct):
    id: str | None = None
    bundle: str | None = None
    domain: str | None = None
    storeurl: str | None = None
    cat: list[str] = []
    publisher: Publisher | None = None


class Geo(msgspec.Struct):
    country: str | None = None
    region: str | None = None
    utcoffset: int | None = None


class Device(msgspec.Struct):
    ua: str | None = None
    ip: str | None = None
    ipv6: str | None = None
    devicetype: int | None = None
    os: str | None = None
    lmt: int | None = None
    dnt: int | None = None
    ifa: str | None = None
    geo: Geo | None = None


class Segment(msgspec.Struct):
    id: str | None = None


class Data(msgspec.Struct):
    id: str | None = None
    segment: list[Segment] = []


class User(msgspec.Struct):
    id: str | None = None
    buyeruid: str | None = None
    consent: str | None = None
    data: list[Data] = []
    ext: Ext | None = None


class Regs(msgspec.Struct):
    coppa: int = 0
    gdpr: int | None = None
    us_privacy: str | None = None
    gpp: str | None = None
    gpp_sid: list[int] = []
    ext: Ext | None = None


class Source(msgspec.Struct):
    tid: str | None = None
    schain: SupplyChain | None = None
    ext: Ext | None = None


class BidRequest(msgspec.Struct):
    id: str
    imp: list[Imp]
    site: Site | None = None
    app: App | None = None
    device: Device | None = None
    user: User | None = None
    regs: Regs | None = None
    source: Source | None = None
    test: int = 0
    at: int = 2
    tmax: int | None = None
    cur: list[str] = []
    bcat: list[str] = []
    badv: list[str] = []
    bapp: list[str] = []
    wseat: list[str] = []  # buyer seats allowed to bid (a partner's bid is checked against them)
    bseat: list[str] = []  # buyer seats blocked


# --- response --------------------------------------------------------------------------


class Bid(msgspec.Struct, omit_defaults=True):
    id: str
    impid: str
    price: float
    adid: str | None = None
    nurl: str | None = None
    burl: str | None = None
    lurl: str | None = None
    adm: str | None = None
    adomain: list[str] = []
    bundle: str | None = None
    cid: str | None = None
    crid: str | None = None
    cat: list[str] = []
    attr: list[int] = []
    dealid: str | None = None
    w: int | None = None
    h: int | None = None
    mtype: int | None = None
    dur: int | None = None  # seconds, video and audio (2.6)
    exp: int | None = None  # seconds we wait for the impression: notices are accepted that long
    ext: dict | None = None


class SeatBid(msgspec.Struct, omit_defaults=True):
    bid: list[Bid]
    seat: str | None = None


class BidResponse(msgspec.Struct, omit_defaults=True):
    id: str
    seatbid: list[SeatBid] = []
    bidid: str | None = None
    cur: str = "USD"
    nbr: int | None = None
    ext: dict | None = None
