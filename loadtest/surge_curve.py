"""The launch's public signup curve, time-compressed and scaled, as the load shape reads it.

Cumulative signups (public figures, DESIGN.md §1): 2M by hour 2, 5M by 4, 10M by 7, ~30M by
the end of day 1 (with ~550/s through hours 7-17), 70M by day 2, 100M by day 5. Between the
points the curve is linear, so the signup rate is constant per segment.

A surge of ``duration_s`` seconds replays the launch's ``hours`` (120 by default: all five days)
so one surge second stands for ``hours * 3600 / duration_s`` launch seconds; ``scale`` turns
launch people into simulated ones (1e-5: one simulated user per 100,000 real ones). The number
of simulated users alive at a surge second is the scaled cumulative signups, so users arrive at
the scaled, compressed signup rate, and — since every arrival stays on as an active user — the
engagement grows with the population, as it did.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

HOUR_S = 3600.0

# (launch hour, cumulative signups)
SIGNUPS: tuple[tuple[float, float], ...] = (
    (0, 0),
    (2, 2_000_000),
    (4, 5_000_000),
    (7, 10_000_000),
    (17, 29_800_000),  # ~550/s from hour 7 to 17
    (24, 31_000_000),
    (48, 70_000_000),
    (120, 100_000_000),
)

# The Threads day-1 peak mix per second, the goal the surge table is read against.
DAY1_PEAK_PER_S = {"signups": 550, "posts": 550, "likes": 1_100, "feed_reads": 2_200}


def cumulative_signups(hour: float) -> float:
    """Signups by launch ``hour`` (linear between the public points; flat after the last)."""
    hours = [h for h, _ in SIGNUPS]
    if hour <= 0:
        return 0.0
    if hour >= hours[-1]:
        return SIGNUPS[-1][1]
    i = bisect.bisect_right(hours, hour)
    (h0, c0), (h1, c1) = SIGNUPS[i - 1], SIGNUPS[i]
    return c0 + (c1 - c0) * (hour - h0) / (h1 - h0)


def signup_rate_per_s(hour: float) -> float:
    """Launch signups per second at ``hour`` (the slope of the segment it falls in)."""
    hours = [h for h, _ in SIGNUPS]
    if hour < 0 or hour >= hours[-1]:
        return 0.0
    i = bisect.bisect_right(hours, hour)
    (h0, c0), (h1, c1) = SIGNUPS[i - 1], SIGNUPS[i]
    return (c1 - c0) / ((h1 - h0) * HOUR_S)


@dataclass(frozen=True)
class Surge:
    duration_s: float = 180.0
    scale: float = 5e-6
    hours: float = 120.0  # how much of the launch to replay

    @property
    def compression(self) -> float:
        """Launch seconds per surge second."""
        return self.hours * HOUR_S / self.duration_s

    def hour_at(self, t_s: float) -> float:
        return t_s * self.compression / HOUR_S

    def users_at(self, t_s: float) -> int:
        """Simulated users alive at surge second ``t_s``."""
        return round(cumulative_signups(self.hour_at(t_s)) * self.scale)

    def arrivals_per_s(self, t_s: float) -> float:
        """Simulated signups per surge second at ``t_s``."""
        return signup_rate_per_s(self.hour_at(t_s)) * self.compression * self.scale

    @property
    def total_users(self) -> int:
        return self.users_at(self.duration_s)

    @property
    def peak_arrivals_per_s(self) -> float:
        return max(signup_rate_per_s(h) for h, _ in SIGNUPS[:-1]) * self.compression * self.scale
