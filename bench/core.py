"""Samples, series, tables and targets: how a scenario's numbers are kept and shown.

A scenario runs its variants interleaved (A B C A B C ...), so that a slow minute on
a shared machine hits every variant alike, and keeps every sample. Tables show the
median with the range, and ratios are taken between medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.infra import BenchError


@dataclass
class Context:
    """What a scenario gets: options, scratch directory, servers and a run id."""

    options: Any
    tmp: Path
    run_id: str
    nginx_url: str = ""
    delay_url: str = ""

    def scratch(self, name: str) -> Path:
        """A fresh directory under the run's temporary directory."""
        path = self.tmp / f"{name}-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path


@dataclass
class Variant:
    """One contestant of a scenario; ``run(rep)`` returns one sample (a dict of numbers)."""

    key: str
    label: str
    run: Callable[[int], dict[str, Any]]


@dataclass
class Series:
    """Every sample of one variant, and the failures if it had any."""

    key: str
    label: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [float(s[metric]) for s in self.samples
                if isinstance(s.get(metric), (int, float))]

    def median(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.median(values) if values else None

    def first(self, key: str, default: Any = "") -> Any:
        for sample in self.samples:
            if key in sample:
                return sample[key]
        return default


@dataclass
class Column:
    """A table column: a metric shown as "median (min-max)" or as the median alone."""

    header: str
    metric: str
    digits: int = 0
    show_range: bool = True


@dataclass
class Table:
    """A scenario's result: one row per variant."""

    key: str
    title: str
    command: str
    columns: list[Column]
    series: list[Series]
    notes: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    extra_columns: list[tuple[str, str]] = field(default_factory=list)

    def find(self, key: str) -> Series | None:
        for series in self.series:
            if series.key == key:
                return series
        return None

    def failures(self) -> list[str]:
        return [f"{self.key}/{s.key}: {f}" for s in self.series for f in s.failures]


def interleave(variants: Sequence[Variant], repeat: int, scenario: str) -> list[Series]:
    """Run every variant ``repeat`` times, in rounds, printing each sample as it comes.

    A variant that fails keeps its failure message and is not run again; the others go
    on, so that one broken peer does not cost the whole run.
    """
    series = {v.key: Series(v.key, v.label) for v in variants}
    for rep in range(repeat):
        for variant in variants:
            current = series[variant.key]
            if current.failures:
                continue

            started = time.monotonic()
            try:
                sample = variant.run(rep)
            except BenchError as error:
                current.failures.append(str(error))
                print(f"  [{scenario} {rep + 1}/{repeat}] {variant.label}: FAILED {error}",
                      flush=True)
                continue
            current.samples.append(sample)
            shown = sample.get("summary", "")
            print(f"  [{scenario} {rep + 1}/{repeat}] {variant.label}: {shown} "
                  f"({time.monotonic() - started:.1f} s)", flush=True)
    return list(series.values())


def number(value: float | None, digits: int = 0) -> str:
    """A figure for a table: thousands separated, ``-`` when missing."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(series: Series, column: Column) -> str:
    values = series.values(column.metric)
    if not values:
        return "-"
    shown = number(statistics.median(values), column.digits)
    if column.show_range and len(values) > 1:
        shown += f" ({number(min(values), column.digits)}-{number(max(values), column.digits)})"
    return shown


def rows(table: Table) -> list[list[str]]:
    """The table as text cells: variant, each column, then extra text columns."""
    out = []
    for series in table.series:
        row = [series.label] + [cell(series, column) for column in table.columns]
        row += [_text(series.first(key, "")) for _, key in table.extra_columns]
        if series.failures:
            row[1] = "FAILED: " + series.failures[0][:80]
        out.append(row)
    return out


def _text(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def headers(table: Table) -> list[str]:
    return (["variant"] + [c.header for c in table.columns]
            + [header for header, _ in table.extra_columns])


def print_table(table: Table) -> None:
    """The table on the terminal, aligned."""
    head = headers(table)
    body = rows(table)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    print(f"\n== {table.title}")
    for row in [head] + body:
        print("  " + "  ".join(text.ljust(width) for text, width in zip(row, widths)))
    for line in table.info:
        print(f"  {line}")
    print(flush=True)


@dataclass
class Target:
    """A ratio between two medians (or a median and a fixed bound) and its goal."""

    name: str
    table: str
    numerator: str
    metric: str
    goal: str
    bound: float
    denominator: str | None = None
    denominator_metric: str | None = None
    unit: str = ""

    def ratio(self, tables: dict[str, Table]) -> float | None:
        table = tables.get(self.table)
        if table is None:
            return None
        top = table.find(self.numerator)
        if top is None or top.median(self.metric) is None:
            return None
        value = top.median(self.metric)
        if self.denominator is None:
            return value
        bottom = table.find(self.denominator)
        metric = self.denominator_metric or self.metric
        below = bottom.median(metric) if bottom else None
        if value is None or not below:
            return None
        return value / below

    def verdict(self, tables: dict[str, Table]) -> tuple[float | None, str]:
        ratio = self.ratio(tables)
        if ratio is None:
            return None, "n/a"
        met = ratio >= self.bound if self.goal == ">=" else ratio <= self.bound
        return ratio, "PASS" if met else "MISS"
