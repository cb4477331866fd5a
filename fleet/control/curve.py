"""Delivery curves: what share of a flight's budget should be spent by time t.

``even`` spreads the budget uniformly; ``traffic`` follows expected traffic, given as weights
over equal slices of the flight (24 hourly weights for a day). Pacing asks the curve for the
share still to come, so a campaign that fell behind catches up over the rest of its flight
instead of bursting now.
"""

from __future__ import annotations

import math

# A typical day of exchange traffic (UTC hours of the region's audience): low at night,
# rising through the morning, peak in the evening.
DIURNAL = [0.45, 0.35, 0.3, 0.3, 0.35, 0.5, 0.7, 0.9, 1.0, 1.05, 1.1, 1.1,
           1.1, 1.1, 1.1, 1.15, 1.2, 1.3, 1.45, 1.55, 1.5, 1.3, 0.95, 0.65]


def cosine_weights(amplitude: float, n: int = 24) -> list[float]:
    """Weights of a 1 - a*cos(2 pi t) day (the simulator's traffic shape)."""
    return [1.0 - amplitude * math.cos(2 * math.pi * (i + 0.5) / n) for i in range(n)]


class Curve:
    def __init__(self, start: float, end: float, weights: list[float] | None = None):
        if end <= start:
            raise ValueError("a flight must end after it starts")
        self.start, self.end = start, end
        w = [max(0.0, float(x)) for x in (weights or [1.0])]
        total = sum(w) or 1.0
        self.weights = [x / total for x in w]
        self.cum = [0.0]
        for x in self.weights:
            self.cum.append(self.cum[-1] + x)

    def fraction(self, t: float) -> float:
        """Share of the budget planned to be spent by ``t`` (0 before the flight, 1 after)."""
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return 1.0
        x = (t - self.start) / (self.end - self.start) * len(self.weights)
        i = min(int(x), len(self.weights) - 1)
        return self.cum[i] + self.weights[i] * (x - i)

    def density(self, t: float) -> float:
        """Planned share per second at ``t``."""
        if t < self.start or t >= self.end:
            return 0.0
        i = min(int((t - self.start) / (self.end - self.start) * len(self.weights)), len(self.weights) - 1)
        return self.weights[i] * len(self.weights) / (self.end - self.start)

    def to_come(self, t: float, horizon: float) -> float:
        """The share of what is still to come that falls in ``[t, t + horizon)``: 1 at the end."""
        left = 1.0 - self.fraction(t)
        if left <= 1e-12:
            return 0.0 if t >= self.end else 1.0
        return min(1.0, (self.fraction(t + horizon) - self.fraction(t)) / left)
