"""Flights: a campaign's budget over a time window, and the delivery curve it is planned along."""

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

    def shape(self) -> Curve:
        from fleet.control.curve import DIURNAL

        if self.curve == "even":
            return Curve(self.start, self.end)
        return Curve(self.start, self.end, self.weights or DIURNAL)
