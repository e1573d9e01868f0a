"""Replay one partition (one audit file): route its recorded scans with the new plan, count.

This is the unit of work, in the single process and on every Dask worker alike: the same
function, so the two paths give the same totals. Each process compiles a plan once (keyed by
the plan's digest) and every partition starts a fresh router from it: chute states as the
replay was told, round-robin positions at the start of their groups (as after an engine
start). Events are routed with their recorded recirculation count and no deadline.
"""
from __future__ import annotations

import datetime as dt
import os
import resource
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sorter.core import _core
from sorter.core.codes import MALFORMED, REASONS
from sorter.core.router import compile_plan
from sorter.replay.source import (SLAB_ROWS, AuditSourceError, Part, fixed, read_part,
                                  reads_columns, table_nbytes)
from sorter.replay.totals import Totals

_REASON_INDEX = {name: i for i, name in enumerate(REASONS)}


@dataclass
class ReplaySpec:
    """Everything a partition needs, shipped once to each worker."""
    plan: object                        # sorter.plan.Plan
    plan_key: str                       # digest of the plan: the compiled-plan cache key
    chute_states: dict = field(default_factory=dict)   # chute -> state code (codes.CHUTE_STATES)
    sample_size: int = 20

    @property
    def destination_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.plan.destinations)


_COMPILED: dict[str, _core.CompiledPlan] = {}


def compiled_plan(spec: ReplaySpec) -> _core.CompiledPlan:
    """The spec's plan compiled, once per process."""
    plan = _COMPILED.get(spec.plan_key)
    if plan is None:
        plan = _COMPILED[spec.plan_key] = compile_plan(spec.plan)
    return plan


def fresh_router(spec: ReplaySpec) -> _core.RouterState:
    state = _core.RouterState(compiled_plan(spec))
    for chute, code in spec.chute_states.items():
        state.set_chute_state(int(chute), int(code))
    return state


def _one(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _recorded_reasons(col: pa.Array, path: str) -> np.ndarray:
    """The recorded reason of each row as a codes.REASONS index (uint8)."""
    if pa.types.is_dictionary(col.type):
        names = col.dictionary.to_pylist()
        idx = fixed(col.indices, np.dtype(col.type.index_type.to_pandas_dtype()))
    else:
        enc = col.dictionary_encode()
        names, idx = enc.dictionary.to_pylist(), fixed(enc.indices, np.int32)
    unknown = [n for n in names if n not in _REASON_INDEX]
    if unknown:
        raise AuditSourceError(f"{path}: column reason holds unknown reason {unknown[0]!r}")
    lut = np.array([_REASON_INDEX[n] for n in names] or [0], np.uint8)
    if np.array_equal(lut, np.arange(len(lut))) and idx.dtype.itemsize == 1:
        return idx.view(np.uint8)
    return lut[idx]


def _iso_hour(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.timezone.utc).isoformat()


def replay_part(part: Part, spec: ReplaySpec) -> Totals:
    """The totals of one audit file routed with the spec's plan."""
    cpu0 = time.thread_time()
    table = read_part(part)
    totals = Totals(spec.destination_names, spec.sample_size)
    totals.files = 1
    totals.files_read.append(part.path)
    totals.bytes_read = table_nbytes(table)
    router = fresh_router(spec)
    n = table.num_rows
    out_chute = np.empty(min(n, SLAB_ROWS), np.uint16)
    out_reason = np.empty(min(n, SLAB_ROWS), np.uint8)
    out_dest = np.empty(min(n, SLAB_ROWS), np.int32)
    for start in range(0, n, SLAB_ROWS):
        slab = table.slice(start, SLAB_ROWS)
        m = slab.num_rows
        ts = fixed(_one(slab.column("ts")), np.int64)
        reads = _one(slab.column("reads"))
        ev_off, rd_off, data = reads_columns(reads)
        recirc = fixed(_one(slab.column("recirculations")), np.uint8)
        rec_reason = _recorded_reasons(_one(slab.column("reason")), part.path)
        chute, reason, dest = out_chute[:m], out_reason[:m], out_dest[:m]
        router.route(ev_off, rd_off, data, recirc, ts, chute, reason, dest, 0, 0)
        malformed = rec_reason == MALFORMED
        n_bad = int(np.count_nonzero(malformed))
        if n_bad:                # not an event: nothing to route, it stays malformed
            chute[malformed] = 0
            reason[malformed] = MALFORMED
            dest[malformed] = -1
        rec_chute_col = _one(slab.column("chute"))
        rec_chute = fixed(rec_chute_col, np.uint16)
        if rec_chute_col.null_count:
            rec_chute = np.where(rec_chute_col.is_valid().to_numpy(zero_copy_only=False),
                                 rec_chute, 0).astype(np.uint16)
        enc = _one(slab.column("destination")).dictionary_encode(null_encoding="encode")
        rec_id = totals.name_ids(enc.dictionary.to_pylist())[fixed(enc.indices, np.int32)]

        totals.events += m
        totals.malformed += n_bad
        totals.new_reason += np.bincount(reason, minlength=len(REASONS))
        totals.recorded_reason += np.bincount(rec_reason, minlength=len(REASONS))
        totals.add_pairs(rec_id, dest)
        totals.new_hourly.add(ts, chute)
        totals.recorded_hourly.add(ts, rec_chute)
        if len(totals.sample) < spec.sample_size:
            changed = np.flatnonzero(rec_id != dest + 1)[: spec.sample_size - len(totals.sample)]
            for r in changed.tolist():
                totals.add_sample((part.index, start + r), _sample_record(
                    part, slab, r, start, totals.names[rec_id[r]], int(rec_chute[r]),
                    int(rec_reason[r]), spec, int(dest[r]), int(chute[r]), int(reason[r])))
    totals.cpu_s = time.thread_time() - cpu0
    totals.peak_rss_kb[f"{socket.gethostname()}:{os.getpid()}"] = peak_rss_kb()
    return totals


def peak_rss_kb() -> int:
    """This process's peak resident set, KiB: VmHWM (ru_maxrss survives exec on Linux, so a
    worker spawned by a bigger process would report its parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _sample_record(part: Part, slab: pa.Table, r: int, start: int, rec_dest, rec_chute: int,
                   rec_reason: int, spec: ReplaySpec, dest: int, chute: int,
                   reason: int) -> dict:
    """One changed parcel, as the report shows it."""
    row = {"file": part.path, "row": start + r,
           "ts": _iso_hour(int(fixed(_one(slab.column("ts")), np.int64)[r])),
           "reads": slab.column("reads")[r].as_py()}
    if "parcel_id" in slab.column_names:
        row["parcel_id"] = slab.column("parcel_id")[r].as_py()
    row["recorded"] = {"destination": rec_dest, "chute": rec_chute,
                       "reason": REASONS[rec_reason]}
    row["new"] = {"destination": spec.destination_names[dest] if dest >= 0 else None,
                  "chute": chute, "reason": REASONS[reason]}
    return row
