"""What a replay counts: sums that merge exactly, so partitions can be counted anywhere.

A replay never keeps its decisions: every slab of routed rows is folded into `Totals` (counts
by reason, by recorded -> new destination, by hour and chute, and a bounded sample of changed
destinations) and dropped. Every count is an integer sum, so merging the totals of partitions
in any order, in one process or from many Dask workers, gives the same numbers; the sample is
ordered by (partition, row) and cut to its size, so it does not depend on the order either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sorter.core.codes import REASONS

HOUR_NS = 3_600_000_000_000
_DENSE_LIMIT = 1 << 22          # (hours x chutes) cells counted with one bincount


class HourlyChutes:
    """Events per (hour, chute): a dense block of hours from `base` (hours since the epoch,
    UTC) by chute number 0..width-1. Grows as hours and chutes arrive."""

    def __init__(self) -> None:
        self.base = 0
        self.counts = np.zeros((0, 0), np.int64)

    @property
    def hours(self) -> int:
        return self.counts.shape[0]

    def _fit(self, h0: int, h1: int, width: int) -> None:
        """Make room for hours h0..h1 and chutes below width."""
        if self.hours == 0:
            self.base = h0
            self.counts = np.zeros((h1 - h0 + 1, width), np.int64)
            return
        lo, hi = min(self.base, h0), max(self.base + self.hours - 1, h1)
        w = max(width, self.counts.shape[1])
        if lo == self.base and hi - lo + 1 == self.hours and w == self.counts.shape[1]:
            return
        grown = np.zeros((hi - lo + 1, w), np.int64)
        off = self.base - lo
        grown[off: off + self.hours, : self.counts.shape[1]] = self.counts
        self.base, self.counts = lo, grown

    def add_block(self, h0: int, block: np.ndarray) -> None:
        """Add a (hours x chutes) block whose first row is hour h0."""
        if block.size == 0:
            return
        self._fit(h0, h0 + block.shape[0] - 1, block.shape[1])
        off = h0 - self.base
        self.counts[off: off + block.shape[0], : block.shape[1]] += block

    def add(self, ts_ns: np.ndarray, chute: np.ndarray) -> None:
        """Count one event per (hour of ts_ns, chute)."""
        if len(ts_ns) == 0:
            return
        lo, hi = int(ts_ns.min()), int(ts_ns.max())
        h0, h1 = lo // HOUR_NS, hi // HOUR_NS
        width = int(chute.max()) + 1
        if h0 == h1:                           # the usual slab: one hour
            self.add_block(h0, np.bincount(chute, minlength=width)[None, :])
            return
        hours = ts_ns // HOUR_NS
        span = h1 - h0 + 1
        if span * width <= _DENSE_LIMIT:
            key = (hours - h0) * width + chute
            self.add_block(h0, np.bincount(key, minlength=span * width).reshape(span, width))
            return
        uniq, inv = np.unique(hours, return_inverse=True)
        key = inv.astype(np.int64) * width + chute
        block = np.bincount(key, minlength=len(uniq) * width).reshape(len(uniq), width)
        for i, h in enumerate(uniq.tolist()):
            self.add_block(h, block[i: i + 1])

    def merge(self, other: "HourlyChutes") -> None:
        self.add_block(other.base, other.counts)


@dataclass
class Totals:
    """The counts of a replay (or of one partition of it).

    Destinations are named: `names` starts with None (no destination) and the new plan's
    destinations in plan order, then every other name the recorded decisions used, as met.
    `pairs[i, j]` counts events whose recorded destination is names[i] and whose new one is
    names[j] (j <= number of new destinations)."""
    new_destinations: tuple[str, ...]
    sample_size: int = 20
    events: int = 0
    malformed: int = 0
    files: int = 0
    bytes_read: int = 0
    cpu_s: float = 0.0               # CPU time of the threads that read and routed (not exact-merge)
    new_reason: np.ndarray = field(default=None)
    recorded_reason: np.ndarray = field(default=None)
    names: list = field(default=None)
    pairs: np.ndarray = field(default=None)
    new_hourly: HourlyChutes = field(default_factory=HourlyChutes)
    recorded_hourly: HourlyChutes = field(default_factory=HourlyChutes)
    sample: list = field(default_factory=list)      # ((part, row), record) of changed rows
    peak_rss_kb: dict = field(default_factory=dict)  # process (host:pid) -> max RSS, KiB
    files_read: list = field(default_factory=list)   # paths, in partition order

    def __post_init__(self) -> None:
        if self.new_reason is None:
            self.new_reason = np.zeros(len(REASONS), np.int64)
        if self.recorded_reason is None:
            self.recorded_reason = np.zeros(len(REASONS), np.int64)
        if self.names is None:
            self.names = [None, *self.new_destinations]
        self._index = {n: i for i, n in enumerate(self.names)}
        if self.pairs is None:
            self.pairs = np.zeros((len(self.names), self.width), np.int64)

    @property
    def width(self) -> int:
        """Columns of `pairs`: no destination, then the new plan's destinations."""
        return len(self.new_destinations) + 1

    def name_ids(self, names: list) -> np.ndarray:
        """Ids in `names` of the given recorded destination names (new names are added)."""
        ids = []
        for n in names:
            i = self._index.get(n)
            if i is None:
                i = self._index[n] = len(self.names)
                self.names.append(n)
            ids.append(i)
        if len(self.names) > self.pairs.shape[0]:
            grown = np.zeros((len(self.names), self.width), np.int64)
            grown[: self.pairs.shape[0]] = self.pairs
            self.pairs = grown
        return np.array(ids, np.int64)

    def add_pairs(self, recorded_id: np.ndarray, new_dest: np.ndarray) -> None:
        """Count (recorded name id, new destination index or -1) per event."""
        w = self.width
        key = recorded_id * w + (new_dest + 1)
        self.pairs += np.bincount(key, minlength=self.pairs.size).reshape(self.pairs.shape)

    def add_sample(self, key: tuple[int, int], record: dict) -> None:
        self.sample.append((key, record))

    def merge(self, other: "Totals") -> "Totals":
        """Add `other` into this one (exact: integer sums; the sample keeps the first rows)."""
        if other.new_destinations != self.new_destinations:
            raise ValueError("totals of different plans cannot be merged")
        self.events += other.events
        self.malformed += other.malformed
        self.files += other.files
        self.bytes_read += other.bytes_read
        self.cpu_s += other.cpu_s
        self.new_reason += other.new_reason
        self.recorded_reason += other.recorded_reason
        ids = self.name_ids(other.names)
        np.add.at(self.pairs, ids, other.pairs)
        self.new_hourly.merge(other.new_hourly)
        self.recorded_hourly.merge(other.recorded_hourly)
        self.sample = sorted(self.sample + other.sample, key=lambda kr: kr[0])[: self.sample_size]
        for proc, kb in other.peak_rss_kb.items():
            self.peak_rss_kb[proc] = max(kb, self.peak_rss_kb.get(proc, 0))
        self.files_read += other.files_read
        return self

    # -- views ---------------------------------------------------------------------------

    def new_by_destination(self) -> dict:
        col = self.pairs.sum(axis=0)
        return {self.names[j]: int(col[j]) for j in range(self.width) if col[j]}

    def recorded_by_destination(self) -> dict:
        row = self.pairs.sum(axis=1)
        return {self.names[i]: int(row[i]) for i in range(len(self.names)) if row[i]}

    def destination_changes(self) -> list[tuple]:
        """(recorded name, new name, events) for every pair whose names differ, largest
        first."""
        out = []
        for i, j in zip(*np.nonzero(self.pairs)):
            if self.names[i] != self.names[j]:
                out.append((self.names[i], self.names[j], int(self.pairs[i, j])))
        out.sort(key=lambda t: (-t[2], str(t[0]), str(t[1])))
        return out
