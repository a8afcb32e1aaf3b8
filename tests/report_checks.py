"""Helpers shared by the audit tests: read a report, and compare two reports row by row."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

EXACT_COLUMNS = ("rejected", "positive", "truth", "line", "decision", "suspect_box", "positive_box", "fold")
FLOAT_COLUMNS = ("score", "probability", "logit", "masked_logit", "gap")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_report(rows: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    """Same candidates with the same values; floats up to the last digit, which may differ where a
    batch holds other images (the kernels block the work differently), and so the order of near ties."""
    assert len(rows) == len(expected)
    keyed = {(row["image"], row["class"]): row for row in rows}
    for want in expected:
        got = keyed[(want["image"], want["class"])]
        for column in FLOAT_COLUMNS:
            assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-5, abs=1e-6), column
        for column in EXACT_COLUMNS:
            assert got[column] == want[column], column
