"""Run a replay: the partitions in this process, or as tasks on a Dask cluster.

    totals = replay(plan, "audit", date_from="2026-05-01", workers=2)

Both paths call `sorter.replay.partition.replay_part` on the same partitions and merge the
returned totals (integer sums), so they give the same numbers. On Dask each partition is one
task, the spec (plan, chute states) is sent to every worker once and compiled there once, and
results are merged as they arrive, so the client holds one `Totals` at a time, never the
decisions.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sorter.core.router import chute_state_code
from sorter.replay.partition import ReplaySpec, replay_part
from sorter.replay.source import list_parts
from sorter.replay.totals import Totals

DASK_MISSING = ("sorter replay --workers/--scheduler needs dask.distributed: "
                "pip install 'sorter[replay]' (or: pip install 'dask[distributed]')")


class DaskMissing(RuntimeError):
    pass


def plan_key(plan) -> str:
    """A digest of the plan's content: the key under which workers keep it compiled."""
    return hashlib.sha256(pickle.dumps(plan, protocol=5)).hexdigest()[:16]


def make_spec(plan, chute_states: dict | None = None, sample_size: int = 20) -> ReplaySpec:
    states = {int(c): chute_state_code(s) for c, s in (chute_states or {}).items()}
    return ReplaySpec(plan=plan, plan_key=plan_key(plan), chute_states=states,
                      sample_size=sample_size)


@dataclass
class Run:
    """A finished replay: its totals and how it ran."""
    totals: Totals
    parts: int
    seconds: float
    mode: str                 # "single process" or the Dask scheduler's address
    workers: int


def _local_cluster(n: int):
    """A local cluster of n single-threaded worker processes on 127.0.0.1 (no dashboard)."""
    from dask.distributed import LocalCluster
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, silence_logs=logging.ERROR,
                        memory_limit=0)


def _dask():
    try:
        import dask.distributed as dd
    except ImportError:
        raise DaskMissing(DASK_MISSING) from None
    return dd


def replay(plan, audit: str | Path, *, date_from: str | None = None,
           date_to: str | None = None, chute_states: dict | None = None,
           sample_size: int = 20, workers: int | None = None, scheduler: str | None = None,
           client=None) -> Run:
    """Route every recorded scan of the audit (dates inclusive) with `plan`; the merged totals.

    `workers` starts a local Dask cluster of that many processes (shut down after);
    `scheduler` connects to an existing one; `client` uses a connected `dask.distributed`
    client; none of them: this process, partition after partition."""
    spec = make_spec(plan, chute_states, sample_size)
    parts = list_parts(audit, date_from, date_to)
    totals = Totals(spec.destination_names, sample_size)
    t0 = time.perf_counter()
    if client is None and workers is None and scheduler is None:
        for part in parts:
            totals.merge(replay_part(part, spec))
        return Run(totals, len(parts), time.perf_counter() - t0, "single process", 1)
    dd = _dask()
    with ExitStack() as stack:
        if client is None:
            if scheduler is not None:
                client = stack.enter_context(dd.Client(scheduler))
            else:
                cluster = stack.enter_context(_local_cluster(workers))
                client = stack.enter_context(dd.Client(cluster))
        t0 = time.perf_counter()
        n_workers = len(client.scheduler_info()["workers"])
        spec_f = client.scatter(spec, broadcast=True)
        futures = client.map(replay_part, parts, [spec_f] * len(parts), pure=False)
        for future in dd.as_completed(futures):
            totals.merge(future.result())
            future.release()
        mode = client.scheduler.address
    return Run(totals, len(parts), time.perf_counter() - t0, mode, n_workers)
