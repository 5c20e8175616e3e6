"""Forecasts on synthetic series (seeded noise): a steady leak, a leak with spikes, a restart sawtooth, flat noise, a step."""

from __future__ import annotations

import random
import statistics

import pytest

from orchestrator.core.forecast import (
    MAX_PAIRS_POINTS, Forecast, Predicted, Window, forecast, pairwise_slopes, predicted, theil_sen,
)

STEP = 30.0              # a sample every 30 s
HOUR = 3600.0
HORIZON = 4 * HOUR       # a forecast needs an hour of samples
LIMIT = 400.0            # MB
LEAK = 0.01              # MB/s: 36 MB an hour


def _series(seconds: float, value, *, seed: int = 1, noise: float = 2.0, started=lambda t: 0.0):
    """(t, value(t) + seeded noise, process start) every STEP seconds for `seconds`."""
    rng = random.Random(seed)
    return [(t, value(t) + rng.uniform(-noise, noise), started(t)) for t in (i * STEP for i in range(int(seconds / STEP) + 1))]


def _fill(samples, window: Window | None = None) -> Window:
    window = window or Window()
    for t, v, s in samples:
        window = window.add(t, v, s)
    return window


def _least_squares_slope(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def test_theil_sen_recovers_an_exact_line():
    slope, intercept = theil_sen([(x, 3.0 + 0.5 * x) for x in range(20)])
    assert (slope, intercept) == (0.5, 3.0)


def test_theil_sen_needs_two_distinct_times():
    with pytest.raises(ValueError):
        theil_sen([(1.0, 2.0), (1.0, 3.0)])


def test_above_the_pair_limit_an_even_subset_is_used_deterministically():
    points = [(float(x), 2.0 * x) for x in range(2000)]
    slopes = pairwise_slopes(points)
    assert len(slopes) == MAX_PAIRS_POINTS * (MAX_PAIRS_POINTS - 1) // 2
    assert theil_sen(points) == theil_sen(points) == (2.0, 0.0)


def test_a_steady_leak_is_forecast_with_a_band_around_it():
    window = _fill(_series(2 * HOUR, lambda t: 100 + LEAK * t))
    now = 2 * HOUR
    fc = forecast(window, LIMIT, HORIZON, now)
    assert fc is not None
    assert fc.slope == pytest.approx(LEAK, rel=0.03)
    truth = (LIMIT - (100 + LEAK * now)) / LEAK
    assert fc.seconds == pytest.approx(truth, rel=0.05)
    assert fc.earliest is not None and fc.latest is not None
    assert fc.earliest < fc.seconds < fc.latest
    assert fc.low_slope < LEAK < fc.high_slope


def test_spikes_do_not_make_or_bend_a_trend():
    rng = random.Random(7)
    spikes = set(rng.sample(range(241), 12))
    samples = [(t, v + (250.0 if i in spikes else 0.0), s)
               for i, (t, v, s) in enumerate(_series(2 * HOUR, lambda t: 100 + LEAK * t))]
    fc = forecast(_fill(samples), LIMIT, HORIZON, 2 * HOUR)
    assert fc is not None and fc.slope == pytest.approx(LEAK, rel=0.05)
    assert abs(_least_squares_slope([(t, v) for t, v, _ in samples]) - LEAK) > abs(fc.slope - LEAK)


def test_a_single_spike_barely_changes_the_slope():
    points = [(t, v) for t, v, _ in _series(2 * HOUR, lambda t: 100 + LEAK * t)]
    spiked = list(points)
    spiked[200] = (spiked[200][0], spiked[200][1] + 1000.0)
    before, _ = theil_sen(points)
    after, _ = theil_sen(spiked)
    assert after == pytest.approx(before, rel=0.02)
    assert _least_squares_slope(spiked) > 1.2 * _least_squares_slope(points)  # least squares bends by a fifth


def test_a_sawtooth_of_restarts_is_not_a_leak():
    # Each process grows 100 MB in its 30 minutes, then restarts: memory never accumulates across processes.
    period = 30 * 60.0
    samples = _series(6 * HOUR, lambda t: 100 + 100 * ((t % period) / period), started=lambda t: t - t % period)
    window = Window()
    for t, v, s in samples:
        window = window.add(t, v, s)
        assert forecast(window, LIMIT, HORIZON, t) is None
        assert all(x >= s for x, _ in window.samples)   # every sample is of the running process


def test_the_window_empties_when_the_process_restarts():
    window = _fill([(t, 1.0, 0.0) for t in range(0, 100, 10)], Window(min_interval=0))
    assert len(window.samples) == 10
    window = window.add(100.0, 1.0, 95.0)
    assert window.samples == ((100.0, 1.0),) and window.started_at == 95.0


def test_samples_closer_than_the_minimum_interval_are_skipped():
    window = _fill([(float(t), float(t), 0.0) for t in range(0, 300, 10)], Window(min_interval=60))
    assert [t for t, _ in window.samples] == [0.0, 60.0, 120.0, 180.0, 240.0]


def test_the_window_is_bounded_by_count_and_age():
    by_count = _fill([(float(t), 1.0, 0.0) for t in range(1000)], Window(max_samples=50, min_interval=0))
    assert len(by_count.samples) == 50 and by_count.samples[0][0] == 950.0
    by_age = _fill([(float(t), 1.0, 0.0) for t in range(1000)], Window(max_age=100.0, min_interval=0))
    assert by_age.samples[0][0] == 899.0 and by_age.span == 100.0


def test_no_forecast_before_enough_samples_or_a_quarter_of_the_horizon():
    leak = _series(2 * HOUR, lambda t: 100 + LEAK * t)
    window = Window()
    first = None
    for t, v, s in leak:
        window = window.add(t, v, s)
        if forecast(window, LIMIT, HORIZON, t) is not None and first is None:
            first = t
    assert first == HORIZON / 4
    # many samples in too short a time, and a long span with too few samples: neither is enough
    dense = _fill([(float(t), 100 + t, 0.0) for t in range(500)], Window(min_interval=0))
    assert forecast(dense, LIMIT, HORIZON, 500.0) is None
    sparse = _fill([(t * 1800.0, 100 + t, 0.0) for t in range(5)])
    assert forecast(sparse, LIMIT, HORIZON, 4 * 1800.0) is None
    assert forecast(sparse, LIMIT, HORIZON, 4 * 1800.0, min_samples=5) is not None


def test_flat_noise_forecasts_nothing_within_the_horizon_and_never_fires():
    window, state = Window(), Predicted()
    for t, v, s in _series(4 * HOUR, lambda t: 300.0, noise=15.0, seed=3):
        window = window.add(t, v, s)
        fc = forecast(window, LIMIT, HORIZON, t)
        if fc is not None:
            # an eighth of the leak the other tests find (a 60-bin fit of this series wanders to 1.0e-3 MB/s at
            # worst, every pair of all its samples to 0.8e-3)
            assert abs(fc.slope) < LEAK / 8
            assert fc.seconds is None or fc.seconds > 10 * HORIZON
        firing, state = predicted(state, fc, (LIMIT - v) / LIMIT, t, horizon=HORIZON)
        assert not firing


def test_a_step_is_not_a_leak_once_it_has_settled():
    series = _series(4 * HOUR, lambda t: 100.0 if t < 30 * 60 else 250.0, seed=5)
    window, state = Window(max_age=3 * HOUR), Predicted()
    for t, v, s in series:
        window = window.add(t, v, s)
        firing, state = predicted(state, forecast(window, LIMIT, HORIZON, t), (LIMIT - v) / LIMIT, t, horizon=HORIZON)
        assert not firing    # headroom stays at 37%
    fc = forecast(window, LIMIT, HORIZON, 4 * HOUR)
    assert fc is not None and fc.level == pytest.approx(250.0, abs=3)
    assert abs(fc.slope) < LEAK / 10 and (fc.seconds is None or fc.seconds > 10 * HORIZON)


def test_a_leak_fires_predicted_only_once_headroom_is_low():
    window, state, fired_at = Window(), Predicted(), None
    for t, v, s in _series(10 * HOUR, lambda t: 100 + LEAK * t):
        window = window.add(t, v, s)
        firing, state = predicted(state, forecast(window, LIMIT, HORIZON, t), (LIMIT - v) / LIMIT, t, horizon=HORIZON)
        if firing and fired_at is None:
            fired_at = t
    # within the horizon from 400 - 4h * 36 MB/h = 256 MB on, but headroom under 20% only from 320 MB (t = 22,000 s)
    assert fired_at is not None and 21_000 <= fired_at <= 23_000
    assert state.firing and state.since == fired_at


def _fc(seconds: float | None) -> Forecast:
    return Forecast(slope=LEAK, low_slope=LEAK, high_slope=LEAK, level=300, limit=LIMIT, seconds=seconds,
                    earliest=seconds, latest=seconds, samples=100, span=HOUR)


def test_predicted_does_not_flap_on_a_series_hovering_at_the_threshold():
    state, changes, was = Predicted(), 0, False
    for i in range(200):
        seconds = HORIZON * (0.95 if i % 2 else 1.05)
        headroom = 0.19 if i % 3 else 0.21
        firing, state = predicted(state, _fc(seconds), headroom, float(i), horizon=HORIZON)
        changes += firing != was
        was = firing
    assert changes == 1 and was


def test_predicted_resolves_when_the_forecast_recedes_or_headroom_recovers():
    _, firing_state = predicted(Predicted(), _fc(HOUR), 0.1, 0.0, horizon=HORIZON)
    assert firing_state.firing
    assert predicted(firing_state, None, 0.1, 1.0, horizon=HORIZON)[0]                 # no forecast (a restart): kept
    assert predicted(firing_state, _fc(HORIZON * 1.4), 0.25, 1.0, horizon=HORIZON)[0]  # inside the margin: kept
    assert predicted(firing_state, _fc(HORIZON * 1.6), 0.1, 1.0, horizon=HORIZON) == (False, Predicted())
    assert predicted(firing_state, _fc(None), 0.1, 1.0, horizon=HORIZON) == (False, Predicted())
    assert predicted(firing_state, None, 0.35, 1.0, horizon=HORIZON) == (False, Predicted())


def test_predicted_needs_both_a_near_forecast_and_low_headroom_to_fire():
    assert predicted(Predicted(), _fc(HOUR), 0.5, 0.0, horizon=HORIZON) == (False, Predicted())
    assert predicted(Predicted(), _fc(2 * HORIZON), 0.05, 0.0, horizon=HORIZON) == (False, Predicted())
    assert predicted(Predicted(), None, 0.05, 0.0, horizon=HORIZON) == (False, Predicted())


def test_a_flat_window_is_fitted_as_every_pair_of_its_samples_would_fit_it():
    from orchestrator.core.forecast import fit
    samples = tuple((60.0 * t, 42.0) for t in range(120))
    assert fit(samples) == fit(samples[:2]) and fit(samples).slope == 0.0 and fit(samples).intercept == 42.0
    assert set(pairwise_slopes(samples)) == {0.0}
    assert fit(((5.0, 1.0), (5.0, 2.0))) is None   # one time only: no line


def test_the_exporter_fits_a_window_again_only_when_its_samples_changed(tmp_path):
    """A window takes a sample every horizon / 30; the exporter samples every few seconds: refitting every window at every
    sample was most of a 500-agent sample's cost. The same samples give the same fit object, unrecomputed."""
    from orchestrator.daemons.thresholds import Thresholds
    thresholds = Thresholds(str(tmp_path), report=lambda action: None, log=lambda line: None)
    key = ("feed", "memory_mb")
    window = Window.of(tuple((60.0 * t, 100.0 + t) for t in range(30)), started_at=0.0)
    first = thresholds._fit(key, window)
    assert first is not None and thresholds._fit(key, window) is first
    grown = window.add(60.0 * 30, 130.0, 0.0)
    again = thresholds._fit(key, grown)
    assert again is not first and again.slope == pytest.approx(1 / 60)
