"""Flights: a campaign's budget over a time window, and the delivery curve it is planned along.

A daily flight renews every UTC day with the same budget. The first day of one that starts
mid-day (a fleet started at 20:00 UTC, a daily campaign created then) runs from its start to the
next midnight with the share of the daily budget that the day's curve still has to come, planned
along the rest of that same curve: the day's plan from then on, not a whole day's plan squeezed
into the hours left (or, from midnight, a plan 80% behind at its first minute).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.control.curve import Curve

DAY_S = 86_400.0


@dataclass
class Flight:
    campaign: str
    budget: float  # fleet currency
    start: float
    end: float
    curve: str = "traffic"  # even | traffic
    weights: list[float] | None = None  # traffic shape over the flight (default: a diurnal day)
    paused: bool = False
    daily: bool = False  # renews every UTC day with the same budget
    # A daily flight's first day begun mid-day: the daily budget that ``budget`` is the
    # remaining share of (the next day renews with it), planned along the rest of the day's curve.
    day_budget: float | None = None

    def shape(self) -> Curve:
        if self.day_budget is not None:
            day = self.start - self.start % DAY_S
            return DayRest(self._curve(day, day + DAY_S), self.start, self.end)
        return self._curve(self.start, self.end)

    def _curve(self, start: float, end: float) -> Curve:
        from fleet.control.curve import DIURNAL

        if self.curve == "even":
            return Curve(start, end)
        return Curve(start, end, self.weights or DIURNAL)


class DayRest(Curve):
    """The part ``[start, end)`` of a whole day's curve, as a curve of its own (shares rescaled)."""

    def __init__(self, day: Curve, start: float, end: float):
        if end <= start:
            raise ValueError("a flight must end after it starts")
        self.day, self.start, self.end = day, start, end
        self.f0 = day.fraction(start)
        self.span = day.fraction(end) - self.f0

    def fraction(self, t: float) -> float:
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return 1.0
        if self.span <= 1e-12:  # nothing of the day's curve left: even
            return (t - self.start) / (self.end - self.start)
        return (self.day.fraction(t) - self.f0) / self.span

    def density(self, t: float) -> float:
        if t < self.start or t >= self.end:
            return 0.0
        if self.span <= 1e-12:
            return 1.0 / (self.end - self.start)
        return self.day.density(t) / self.span


def daily_flight(cid: str, budget: float, now: float, curve: str = "traffic", weights=None,
                 paused: bool = False) -> Flight:
    """Today's flight of a daily budget from ``now`` on: the whole UTC day at midnight, else the
    rest of it with the share of the budget that the day's curve has still to come."""
    day = now - now % DAY_S
    whole = Flight(cid, budget, day, day + DAY_S, curve, weights, paused, True)
    if now <= day:
        return whole
    left = 1.0 - whole.shape().fraction(now)
    return Flight(cid, budget * left, now, day + DAY_S, curve, weights, paused, True, day_budget=budget)


def flight_from_body(cid: str, body: dict, f: Flight | None, now: float) -> Flight:
    """An operator's flight (the API's body) over the current one ``f``; unknown fields and
    impossible values are refused (ValueError, a 422)."""
    allowed = {"budget", "start", "end", "curve", "weights", "paused", "daily"}
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    day = now - now % DAY_S
    # A daily flight's partial first day keeps its daily budget (the flight's is a share of it).
    budget = float(body.get("budget", (f.budget if f.day_budget is None else f.day_budget) if f else -1))
    if budget < 0:
        raise ValueError("budget is required and must be >= 0")
    daily = bool(body.get("daily", f.daily if f else "start" not in body))
    start = float(body.get("start", f.start if f else day))
    end = float(body.get("end", f.end if f else (day + DAY_S)))
    curve = body.get("curve", f.curve if f else "traffic")
    if curve not in ("even", "traffic"):
        raise ValueError("curve is 'even' or 'traffic'")
    weights = body.get("weights", f.weights if f else None)
    if weights is not None and (not isinstance(weights, list) or not weights
                                or any(not isinstance(w, (int, float)) or w < 0 for w in weights)):
        raise ValueError("weights: a non-empty list of non-negative numbers")
    if end <= start:
        raise ValueError("end must be after start")
    paused = bool(body.get("paused", f.paused if f else False))
    if daily and (f is None and not {"start", "end"} & set(body)
                  or f is not None and f.day_budget is not None and (start, end) == (f.start, f.end)):
        # A new daily campaign is planned from now (the rest of today's budget and curve), and
        # a change to such a first day keeps it so; later days renew whole.
        return daily_flight(cid, budget, now if f is None else f.start, curve, weights, paused)
    return Flight(cid, budget, start, end, curve, weights, paused, daily)
