"""Forecasts of a growing figure (memory, open files) reaching its limit, and the PREDICTED alert's decision.

Owned here, pure: the sliding `Window` of one agent's samples of one metric,
the robust slope (`theil_sen`), the `forecast` of when the limit is reached,
and `predicted`, which decides with hysteresis whether the PREDICTED alert
fires. The exporter keeps a window per (agent, metric), adds each sample with
the time and the start time of the process it came from, and asks; nothing
here reads a clock or a process.

    window     at most `max_samples` samples, none older than `max_age`; a new
               process start time empties it (a sawtooth of restarts is not a leak)
    slope      Theil-Sen: the median of the slopes between every pair of samples,
               so one spike does not make a trend; above MAX_PAIRS_POINTS samples,
               the means of that many bins of consecutive samples; a flat window
               (every value equal) is the flat line at once; `fit` is the part
               that depends on the samples alone, so a caller can keep it until
               the window changes
    band       Sen's confidence interval of that slope (the ranks of the sorted
               pairwise slopes around the median, z = 1.96)
    forecast   none until the window holds `min_samples` samples spanning a
               quarter of the horizon; then the seconds until the fitted line
               reaches the limit: a point, and the earliest and latest of the band
    PREDICTED  fires when the point forecast is within the horizon and headroom
               is below `fire_below`; resolves only when the forecast is beyond
               `resolve_margin` times the horizon (or never) or headroom is back
               above `resolve_above`
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

# Up to this many samples every pair is used (1,770 pairs, about 0.3 ms); above it, the means of this many bins of
# consecutive samples. A fit of 120 samples took 1.45 ms here: with two windows for each of 500 agents, refitting a few of them at
# every sample, the exporter's cost was forecasts.
MAX_PAIRS_POINTS = 60
# Sen's interval: z of a two-sided 95% normal interval.
BAND_Z = 1.96


def _floats(values: Iterable[float] = ()) -> array[float]:
    return array("d", values)


@dataclass(frozen=True)
class Window:
    """The recent samples, (time, value), of one metric of one process, oldest first. Never changed once made
    (`add` makes another): the times and values are kept as arrays of doubles, 16 bytes a sample where a tuple
    of two floats takes 104 (1,000 windows at 500 agents)."""

    times: array[float] = field(default_factory=_floats)
    values: array[float] = field(default_factory=_floats)
    started_at: float | None = None    # the start time of the process the samples came from
    # A fit costs n(n-1)/2 slopes (above MAX_PAIRS_POINTS, of that many bins): the exporter keeps 30 samples
    # over its horizon (daemons.thresholds.WINDOW_SAMPLES), 435 slopes.
    max_samples: int = 120
    min_interval: float = 60.0         # a sample sooner than this after the last one kept is skipped
    max_age: float = 6 * 3600.0

    @classmethod
    def of(cls, samples: Sequence[tuple[float, float]], **settings: Any) -> Window:
        """A window holding `samples` as they are."""
        return cls(times=_floats(t for t, _ in samples), values=_floats(v for _, v in samples), **settings)

    def add(self, t: float, value: float, started_at: float | None) -> Window:
        """This window with the sample added (itself when the sample is skipped); emptied first if it comes from
        another process than the others."""
        times = self.times if started_at == self.started_at else _floats()
        if times and t - times[-1] < self.min_interval:
            return self
        kept = [i for i, x in enumerate(times) if t - x <= self.max_age and x < t][-(self.max_samples - 1):] \
            if self.max_samples > 1 else []
        values = self.values if times is self.times else _floats()
        return replace(self, times=_floats([*(times[i] for i in kept), t]),
                       values=_floats([*(values[i] for i in kept), value]), started_at=started_at)

    @property
    def samples(self) -> tuple[tuple[float, float], ...]:
        return tuple(zip(self.times, self.values, strict=True))

    @property
    def span(self) -> float:
        return self.times[-1] - self.times[0] if self.times else 0.0


def _subset(points: tuple[tuple[float, float], ...] | list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points, or above MAX_PAIRS_POINTS that many bins of consecutive points, each its mean time and value:
    binning keeps every sample's weight (a subset would drop some, and the slope of noise would wander), and a
    spike still moves one bin only."""
    n = len(points)
    if n <= MAX_PAIRS_POINTS:
        return list(points)
    bins = []
    for i in range(MAX_PAIRS_POINTS):
        chunk = points[i * n // MAX_PAIRS_POINTS:(i + 1) * n // MAX_PAIRS_POINTS]
        bins.append((math.fsum(x for x, _ in chunk) / len(chunk), math.fsum(y for _, y in chunk) / len(chunk)))
    return bins


def pairwise_slopes(points: tuple[tuple[float, float], ...] | list[tuple[float, float]]) -> list[float]:
    """The slopes between every pair of points with distinct times (of the subset, above MAX_PAIRS_POINTS), sorted."""
    pts = _subset(points)
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(pts) for x2, y2 in pts[i + 1:] if x2 != x1]
    slopes.sort()
    return slopes


def theil_sen(points: tuple[tuple[float, float], ...] | list[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the Theil-Sen line: the median pairwise slope, and the median of y - slope * x."""
    slopes = pairwise_slopes(points)
    if not slopes:
        raise ValueError("a slope needs two points at different times")
    slope = statistics.median(slopes)
    return slope, statistics.median(y - slope * x for x, y in points)


def sen_band(slopes: list[float], n: int, z: float = BAND_Z) -> tuple[float, float]:
    """Sen's confidence interval of the median slope, from the sorted pairwise `slopes` of `n` points."""
    count = len(slopes)
    c = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    low = max(0, min(count - 1, math.floor((count - c) / 2.0)))
    high = max(0, min(count - 1, math.ceil((count + c) / 2.0)))
    return slopes[low], slopes[high]


class Forecast(NamedTuple):   # a tuple: 1,000 of them a sample at 500 agents, at a fifth of a frozen dataclass's cost
    slope: float                      # per second
    low_slope: float
    high_slope: float
    level: float                      # the fitted value at `now`
    limit: float
    seconds: float | None             # until the fitted line reaches the limit; None: never (not growing)
    earliest: float | None            # with the band's highest slope
    latest: float | None              # with its lowest; None: possibly never
    samples: int
    span: float


def _until(level: float, limit: float, slope: float) -> float | None:
    if level >= limit:
        return 0.0
    return (limit - level) / slope if slope > 0 else None


@dataclass(frozen=True, slots=True)
class Fit:
    """The Theil-Sen line of some samples, with Sen's band of its slope."""

    slope: float
    intercept: float
    low_slope: float
    high_slope: float


Samples = tuple[tuple[float, float], ...]


def fit(samples: Samples) -> Fit | None:
    """The line through `samples` (time order); None without two distinct times."""
    if len(samples) < 2 or samples[0][0] == samples[-1][0]:
        return None
    first = samples[0][1]
    if all(y == first for _, y in samples):   # flat (open files, an idle agent's memory): every slope is 0
        return Fit(slope=0.0, intercept=first, low_slope=0.0, high_slope=0.0)
    slopes = pairwise_slopes(samples)
    if not slopes:
        return None
    slope = statistics.median(slopes)
    low, high = sen_band(slopes, min(len(samples), MAX_PAIRS_POINTS))
    return Fit(slope=slope, intercept=statistics.median(y - slope * x for x, y in samples), low_slope=low, high_slope=high)


def fit_window(window: Window) -> Fit | None:
    return fit(window.samples)


def forecast(window: Window, limit: float, horizon: float, now: float, *, min_samples: int = 10,
             fit_of: Callable[[Window], Fit | None] = fit_window) -> Forecast | None:
    """When the window's trend reaches `limit`, seen at `now`; None until there is enough to say.

    `fit_of`: how to get the line of the window's samples (`fit_window`, or a caller's cache of it)."""
    if len(window.times) < max(2, min_samples) or window.span < horizon / 4.0:
        return None
    line = fit_of(window)
    if line is None:
        return None
    level = line.intercept + line.slope * now
    return Forecast(slope=line.slope, low_slope=line.low_slope, high_slope=line.high_slope, level=level, limit=limit,
                    seconds=_until(level, limit, line.slope), earliest=_until(level, limit, line.high_slope),
                    latest=_until(level, limit, line.low_slope), samples=len(window.times), span=window.span)


class Predicted(NamedTuple):
    """The PREDICTED alert's state for one agent and metric; persisted by whoever asks."""

    firing: bool = False
    since: float | None = None        # when it started firing
    seconds: float | None = None      # the forecast when it last fired or was kept firing


def predicted(state: Predicted, fc: Forecast | None, headroom: float, now: float, *, horizon: float,
              fire_below: float = 0.2, resolve_above: float = 0.3, resolve_margin: float = 1.5) -> tuple[bool, Predicted]:
    """Whether PREDICTED fires, and the new state. `headroom` is (limit - value) / limit now.

    Fires when the forecast reaches the limit within `horizon` and headroom is under `fire_below`.
    Once firing it stays so, with no forecast too, until the forecast is beyond `resolve_margin` × horizon
    (or says never) or headroom is above `resolve_above`: a series hovering at the threshold does not flap.
    """
    within = fc is not None and fc.seconds is not None and fc.seconds < horizon
    if not state.firing:
        if within and headroom < fire_below:
            return True, Predicted(True, now, fc.seconds if fc else None)
        return False, state
    recovered = headroom > resolve_above
    receded = fc is not None and (fc.seconds is None or fc.seconds > horizon * resolve_margin)
    if recovered or receded:
        return False, Predicted()
    return True, state._replace(seconds=fc.seconds if fc else state.seconds)
