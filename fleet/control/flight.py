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
