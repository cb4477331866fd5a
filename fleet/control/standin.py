"""Room control grants while what it grants is not yet durable.

A pushed lease is a promise the next incarnation must count, so ``Control.sync`` saves the state
before it answers. Two cases break that, and each is bounded here:

- **Just restarted** (``no_new_room``): the last incarnation may have pushed leases it could not
  save. Until they have run out (``lease_ttl_s``) control grants no new room: a replica keeps its
  reservations and the room of a lease control knows it holds.
- **Saves failing** (Redis away; ``StandIn``): like a card network standing in for an issuer it
  cannot reach, control keeps granting, but only within a stand-in allowance per campaign that
  the last saved state announced: ``standin_share`` of the flight's budget. Everything a replica may
  bill after that save beyond what the saved state already counts for it (the rest of its saved
  lease) is charged to the allowance; once it is used, no new room. A restart holds the saved
  allowance back as a lease of its own for ``hold_s`` after the quiet period, and keeps every
  saved lease counted as if it expired then: the bids of a replica that died with control under
  leases nobody saved bill within what the new incarnation holds back.

Without this, a sync answered while Redis was away pushed room nobody could recover: if that
replica died with control, its bids billed for up to the notice window while the restarted
control, after its quiet period, handed the same money out again
(``tests/test_money_attacks.py``). Failing closed instead (no new room at all while saves fail)
stops every campaign a few seconds into any Redis outage. The allowance is a share of the budget,
not of the plan: every restart holds it back for ``hold_s`` whether or not it was used, so its
cost is fixed (0.2% of a daily budget, by default, ~3 minutes of an even day's plan), where a
plan's worth would be most of a short flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from fleet.control.messages import Lease, Report
from fleet.control.records import LeaseRec

PHANTOM = "~standin"  # the replica name of a held-back allowance's lease


def no_new_room(pacer, r: Report, leases: dict[str, Lease]) -> dict[str, Lease]:
    """``leases`` cut to what control already counts: the replica's own reservations, or the
    room left in a lease it holds that control knows (saved before it was pushed). What control
    grants just after a restart (leases the last incarnation could not save may be live) and
    before it has read its state: no new room, but a replica does not lose what it has."""
    out = {}
    for cid, lease in leases.items():
        room = r.reserved.get(cid, 0.0)
        held = pacer.prior.get(f"{cid}|{r.replica}")
        if held is not None and r.held and r.held.get(cid) == held.id:
            room = max(room, held.outstanding())
        out[cid] = _cut(pacer, r, cid, lease, min(lease.amount, room))
    return out


def held_unsaved(pacer, key: str, held: str | None, cur: LeaseRec | None, prior: LeaseRec | None) -> bool:
    """``Pacer.confirm`` for a replica naming a lease no saved state knows: one an earlier
    incarnation pushed unsaved, most likely a renewal of the saved lease restored for it. Until it
    names one of this incarnation's, that restored record stays counted (``prior``): otherwise a
    reply lost just after a restart left the replica on the unsaved lease while control counted
    only the new one. True when it decided."""
    ours = f"{pacer.incarnation}-"
    if held is None or held.startswith(ours) or (prior is not None and held == prior.id):
        return False
    old = [rec for rec in (prior, cur) if rec is not None and not rec.id.startswith(ours)]
    if old:
        pacer.prior[key] = max(old, key=LeaseRec.outstanding)
    else:
        pacer.prior.pop(key, None)
    return True


def _cut(pacer, r: Report, cid: str, lease: Lease, amount: float) -> Lease:
    rec = pacer.leases.get(f"{cid}|{r.replica}")
    if rec is not None and rec.id == lease.id:
        rec.amount = amount
    return msgspec.structs.replace(lease, amount=amount)


@dataclass
class Saved:
    """What one saved state counts, taken as it was written."""

    at: float
    allowance: dict[str, float]  # campaign -> stand-in room, announced in the state
    # "campaign|replica" -> what the state counts its lease may still bill, for the replicas that
    # could still renew it (seen within lease_ttl_s): a restart keeps these counted (``restore``)
    cover: dict[str, float]
    base: dict[str, dict[str, float]]  # replica -> campaign -> its reported spend, cumulative

    def doc(self) -> dict:
        return {"at": self.at, "allowance": self.allowance}


def _renewing(pacer, rec: LeaseRec, at: float) -> bool:
    """Could this lease's replica still renew it at ``at``? (It reports every interval.)"""
    book = pacer.replicas.get(rec.replica)
    return book is not None and book.last_seen >= at - pacer.s.lease_ttl_s


@dataclass
class StandIn:
    share: float  # of each flight's budget (``control.standin_share``)
    saved: Saved | None = None  # the last state saved by this incarnation (None: none yet)
    used: dict[str, dict[str, float]] = field(default_factory=dict)  # campaign -> key -> charged

    def take(self, pacer, now: float, quiet: bool = False) -> Saved:
        """The allowance and the counts of the state about to be written (``Control.save``).
        None while ``quiet`` (just restarted: no new room is granted then, so a crash loop holds
        nothing back); not capped by the room left, so a daily campaign on plan at midnight still
        has one for the next day's flight (the lease a stand-in grant cuts is capped already)."""
        allowance = {}
        for cid, cp in pacer.campaigns.items():
            f = cp.flight
            if quiet or f.paused or now >= f.end:
                allowance[cid] = 0.0
                continue
            allowance[cid] = round(self.share * (f.budget if f.day_budget is None else f.day_budget), 9)
        cover = {key: pacer.counted(key) for key, rec in {**pacer.prior, **pacer.leases}.items()
                 if _renewing(pacer, rec, now)}
        return Saved(now, allowance, cover, {n: dict(b.spend) for n, b in pacer.replicas.items()})

    def adopt(self, saved: Saved) -> None:
        """The state was written: its counts are what a restart would start from."""
        self.saved, self.used = saved, {}

    def cut(self, pacer, r: Report, leases: dict[str, Lease]) -> dict[str, Lease]:
        """``leases`` pushed without a save: what the replica may bill from the last save on,
        beyond what that state counts for it, is charged to the campaign's allowance (the other
        replicas' charges first); past it, the lease covers its reservations and nothing new."""
        s = self.saved or Saved(0.0, {}, {}, {})
        out = {}
        for cid, lease in leases.items():
            key = f"{cid}|{r.replica}"
            used = self.used.setdefault(cid, {})
            left = s.allowance.get(cid, 0.0) - sum(v for k, v in used.items() if k != key)
            cover = s.cover.get(key, 0.0)
            since = max(0.0, r.spend.get(cid, 0.0) - s.base.get(r.replica, {}).get(cid, 0.0))
            # The lease bounds what the replica holds or bills after this report: with the bills
            # reported since the save, all it may bill from then on.
            amount = max(r.reserved.get(cid, 0.0), min(lease.amount, cover + left - since))
            used[key] = max(used.get(key, 0.0), since + amount - cover)
            out[cid] = _cut(pacer, r, cid, lease, amount)
        return out

    @staticmethod
    def restore(pacer, doc: dict, now: float, quiet_until: float) -> None:
        """A restart from a state saved with ``doc``: the last incarnation may have granted up
        to its allowance unsaved, and renewed the saved leases of the replicas it still heard
        from unsaved until it died (at the latest, now): both stay counted until ``hold_s``
        after the quiet period, when the last such lease has run out."""
        at, allowance = doc.get("at"), doc.get("allowance", {})
        for book in (pacer.leases, pacer.prior):
            for rec in book.values():
                if at is not None and _renewing(pacer, rec, at):
                    rec.expires_at = max(rec.expires_at, quiet_until)
        for cid, amount in allowance.items():
            if amount > 0 and cid in pacer.campaigns:
                key = f"{cid}|{PHANTOM}-{pacer.incarnation}"
                pacer.leases[key] = LeaseRec(f"{pacer.incarnation}-standin", cid, "", PHANTOM, amount, now,
                                             quiet_until)
