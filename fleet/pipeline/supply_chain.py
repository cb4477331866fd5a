"""The supply chain (``source.schain``, 2.5 ``source.ext.schain``): who sold this impression,
and what the request's tier does about a chain that hides or stretches that.

A chain is judged against its tier's ``SupplyChainPolicy`` (``regions.yaml``): missing, incomplete
(``complete: 0``), longer than ``max_hops`` nodes, or naming a seller its system's sellers.json
does not list. Each finding maps to an action: bid as usual, bid down (values x ``bid_down``), or
refuse with the OpenRTB no-bid reason (16 incomplete supply chain: missing or incomplete; 17
blocked supply chain node: too long, unknown seller). The strongest action of all findings wins.

sellers.json files are local (``admission.sellers``: asi domain -> file), read when the region
starts and written by ``fleet sellers refresh``; nothing is fetched on the request path. A chain
node whose system has no file is not judged on its seller id.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import msgspec

from fleet.config import SupplyChainPolicy, resolve
from fleet.openrtb.model import BidRequest, SupplyChain
from fleet.openrtb.nbr import NBR

log = logging.getLogger("fleet.supply_chain")

_RANK = {"bid": 0, "bid_down": 1, "refuse": 2}


class Verdict(NamedTuple):
    action: str  # bid | bid_down | refuse
    reason: str  # the finding that decided ('' when the chain is fine)
    nbr: int  # the OpenRTB no-bid reason when refused
    factor: float  # what bids are multiplied by (1.0 unless bid down)


FINE = Verdict("bid", "", 0, 1.0)


class SellersFile(msgspec.Struct):
    class Seller(msgspec.Struct):
        seller_id: str | int = ""

    sellers: list[Seller] = []


def load_sellers(files: dict[str, str]) -> dict[str, frozenset[str]]:
    """asi domain -> the seller ids its sellers.json lists; a missing or unreadable file is
    logged and left out (its chain nodes are then not judged on their seller id)."""
    out: dict[str, frozenset[str]] = {}
    for asi, path in files.items():
        try:
            doc = msgspec.json.decode(Path(resolve(path)).read_bytes(), type=SellersFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("sellers.json for %s not loaded from %s: %s", asi, path, exc)
            continue
        out[asi.lower()] = frozenset(str(s.seller_id) for s in doc.sellers)
    return out


def chain(req: BidRequest) -> SupplyChain | None:
    """The request's supply chain, 2.6 placement first."""
    src = req.source
    if src is None:
        return None
    if src.schain is not None:
        return src.schain
    return src.ext.schain if src.ext is not None else None


def findings(sc: SupplyChain | None, max_hops: int, sellers: dict[str, frozenset[str]]) -> list[str]:
    """What is wrong with a chain: 'missing', 'incomplete', 'too_long', 'unknown_seller'."""
    if sc is None or not sc.nodes:
        return ["missing"]
    out = []
    if sc.complete != 1:
        out.append("incomplete")
    if len(sc.nodes) > max_hops:
        out.append("too_long")
    if sellers:
        for node in sc.nodes:
            known = sellers.get(node.asi.lower())
            if known is not None and node.sid not in known:
                out.append("unknown_seller")
                break
    return out


def judge(req: BidRequest, policy: SupplyChainPolicy, sellers: dict[str, frozenset[str]]) -> Verdict:
    """The tier policy's verdict on the request's chain (the strongest action of its findings)."""
    best = FINE
    for finding in findings(chain(req), policy.max_hops, sellers):
        action = getattr(policy, finding)
        if _RANK[action] > _RANK[best.action]:
            nbr = (NBR.INCOMPLETE_SUPPLY_CHAIN if finding in ("missing", "incomplete")
                   else NBR.BLOCKED_SUPPLY_CHAIN_NODE)
            factor = policy.bid_down if action == "bid_down" else 1.0
            best = Verdict(action, f"schain_{finding}", nbr, factor)
    return best


def refresh(files: dict[str, str], fetch) -> dict[str, str]:
    """Fetch each system's sellers.json (``fetch(url) -> bytes``) and write it to its local file
    when it parses; returns asi -> 'ok' or why not. Run by the operator (``fleet sellers
    refresh``), never on the request path."""
    out = {}
    for asi, path in files.items():
        try:
            body = fetch(f"https://{asi}/sellers.json")
            msgspec.json.decode(body, type=SellersFile)  # only a file that parses replaces the old
            dest = Path(resolve(path))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".tmp")
            tmp.write_bytes(body)
            tmp.replace(dest)
            out[asi] = "ok"
        except Exception as exc:  # noqa: BLE001 - one system's failure must not stop the others
            out[asi] = f"{type(exc).__name__}: {exc}"
    return out

