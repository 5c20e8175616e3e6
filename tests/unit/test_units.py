"""Durations and sizes are read the way manifests write them."""

import pytest

from orchestrator.core.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
    ("1m30s", 90.0), ("2", 2.0), (2, 2.0), (0.25, 0.25), ("1.5s", 1.5), (" 3s ", 3.0), ("0", 0.0),
])
def test_durations_in_every_documented_spelling_are_read_as_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10 seconds", "-5s", "5x", "", "s", "1h-2m", True, None, [1], "nan", "inf", -1, "1.2.3s"])
def test_anything_else_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    (1024, 1024), ("512", 512), ("512KB", 512_000), ("50MB", 50_000_000), ("1GiB", 2**30), ("1.5KiB", 1536), ("7B", 7),
])
def test_sizes_use_decimal_units_and_binary_units_as_named(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12 parsecs", "-1", "MB", -5, True, "1.5.2MB"])
def test_anything_else_is_not_a_size(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("seconds", [0.25, 1.0, 1.5, 60.0, 300.0, 3600.0, 90.0])
def test_formatted_durations_read_back_to_the_same_seconds(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
