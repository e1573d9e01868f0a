"""What the two simulators share: the parcels on the loop, and the way back to the scanner.

The tunnel simulator creates parcels and scans them; the PLC simulator moves them to their
chutes. A parcel that is not diverted (no chute, chute full, failed divert) stays on its carrier
and comes round to the scanner again: the PLC simulator hands it to `LoopBack`, and the tunnel
simulator takes it from there when it is due, scanning it with one more recirculation.
"""
from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Parcel:
    parcel_id: int
    reads: list[bytes]                  # what the scanner reports (may be empty: no read)
    label: str                          # what is printed on it, for humans: "S10 advised", ...
    expected_destination: str | None    # where the plan should send it (None: it cannot sort)
    recirculations: int = 0


@dataclass(order=True)
class _Due:
    due: float
    parcel_id: int = field(compare=False)


class Registry:
    """Every parcel the simulation has created, by id (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._parcels: dict[int, Parcel] = {}

    def add(self, parcel: Parcel) -> None:
        with self._lock:
            self._parcels[parcel.parcel_id] = parcel

    def get(self, parcel_id: int) -> Parcel | None:
        with self._lock:
            return self._parcels.get(parcel_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._parcels)

    def ids(self) -> list[int]:
        with self._lock:
            return list(self._parcels)


class LoopBack:
    """Parcels travelling round the loop back to the scanner, released when due."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._heap: list[_Due] = []

    def send_round(self, parcel_id: int, after_s: float) -> None:
        with self._lock:
            heapq.heappush(self._heap, _Due(self._clock() + after_s, parcel_id))

    def due(self) -> list[int]:
        """Parcel ids back at the scanner now (each returned once)."""
        now = self._clock()
        out = []
        with self._lock:
            while self._heap and self._heap[0].due <= now:
                out.append(heapq.heappop(self._heap).parcel_id)
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)
