"""What an outside integrator found (issue 12), one test each: extreme scan times, the wire's edge
cases on a real engine, the malformed metric, config paths, and a fuzzing run of the decoder
and the control handler (hypothesis at a large example count; docs/engine.md, "Fuzzing")."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter import wire
from sorter.core import codes
from sorter.core.events import EventBatch
from sorter.core.reference import ReferenceRouter
from sorter.core.router import Router
from sorter.plan import load_plan

PLAN = load_plan()
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
LATE = codes.REASON_CODE["late"]


# -- `late` for any scan time -------------------------------------------------------------------

@pytest.mark.parametrize("ts", [I64_MIN, -8 * 10**18, I64_MIN + 1, -1, 0])
def test_a_scan_time_far_in_the_past_is_late(ts):
    batch = EventBatch.from_reads([[b"050010"]], ts_ns=np.array([ts], np.int64))
    now = time.time_ns()
    for router in (Router(PLAN), ReferenceRouter(PLAN)):
        assert router.route(batch, now_ns=now, deadline_ns=500_000_000).reason.tolist() == [LATE]


@settings(max_examples=2000, deadline=None)
@given(ts=st.lists(st.integers(I64_MIN, I64_MAX), min_size=1, max_size=8),
       now=st.integers(I64_MIN, I64_MAX), deadline=st.integers(0, I64_MAX))
def test_core_and_reference_agree_on_late_over_the_whole_int64_range(ts, now, deadline):
    batch = EventBatch.from_reads([[b"050010"]] * len(ts), ts_ns=np.array(ts, np.int64))
    core = Router(PLAN).route(batch, now_ns=now, deadline_ns=deadline)
    ref = ReferenceRouter(PLAN).route(batch, now_ns=now, deadline_ns=deadline)
    assert core.reason.tolist() == ref.reason.tolist()
    expected = [deadline > 0 and now - t > deadline for t in ts]      # Python ints: exact
    assert [r == LATE for r in core.reason.tolist()] == expected
