"""The PLC / sorter simulator: the sans-IO loop model with injected time and fixed seeds, the
socket shell against stand-in sockets, and the shell against a real engine subprocess."""
from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from engine_harness import EngineProcess
from simulators.model import LoopBack, Parcel, Registry
from simulators.plc import LoopConfig, PlcSimulator, SorterLoop, plan_chutes
from sorter import wire
from sorter.plan import Destination, Plan, load_plan

# Chutes 1..10 on the machine; groups A = 1, 2; B = 3; C = 5; special 9 and 10; 4, 6-8 spare.
PLAN = Plan(name="t", version="v1", home_country="KZ", chutes=tuple(range(1, 11)),
            special={"no_read": 9, "invalid": 9, "conflict": 10, "unknown_destination": 10,
                     "overflow": 10},
            destinations=[Destination("A", (1, 2)), Destination("B", (3,)),
                          Destination("C", (5,))])

# travel to chute c: (5 + (c - 1) * 2.5) / 2.5 = 2 + (c - 1) s; loop: (5 + 9 * 2.5 + 20) / 2.5 = 19 s
GEOMETRY = dict(speed_mps=2.5, first_chute_m=5.0, chute_spacing_m=2.5, return_m=20.0)
LOOP_TIME = 19.0


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(**kw) -> SorterLoop:
    return SorterLoop(PLAN, **{**GEOMETRY, "failed_divert_p": 0.0, **kw})


def at(loop: SorterLoop, lb_clock: Clock | None, t: float) -> None:
    if lb_clock is not None:
        lb_clock.t = t
    loop.advance(t)


# -- the model --------------------------------------------------------------------------------

def test_chutes_geometry_and_initial_state():
    assert plan_chutes(PLAN) == [1, 2, 3, 5, 9, 10]
    loop = make(disabled=(3,))
    assert loop.loop_time_s == pytest.approx(LOOP_TIME)
    assert loop.travel_time_s(1) == pytest.approx(2.0)
    assert loop.travel_time_s(10) == pytest.approx(11.0)
    assert loop.chute_states() == [(1, "available"), (2, "available"), (3, "disabled"),
                                   (5, "available"), (9, "available"), (10, "available")]
    assert loop.take_chute_changes() == []          # the initial state is announced by the shell
    with pytest.raises(ValueError):
        make(disabled=(4,))                          # spare chute: not managed
    with pytest.raises(ValueError):
        LoopConfig(failed_divert_p=1.5)


def test_travel_time_is_respected():
    loop = make()
    loop.on_decision(1, 5, 10.0)                     # travel to chute 5: 6 s
    loop.advance(15.99)
    assert loop.take_confirmations() == [] and loop.on_loop == 1
    loop.advance(16.0)
    assert loop.take_confirmations() == [(1, 5, "sorted")]
    assert loop.on_loop == 0
    assert loop.snapshot()["chutes"][5]["fill"] == 1


def test_chute_fills_reports_full_then_operator_empties_it():
    loop = make(capacity=3, empty_after_s=30.0)
    for i, t in enumerate((0.0, 0.1, 0.2, 0.3)):
        loop.on_decision(i, 1, t)
    loop.advance(2.15)
    assert loop.take_chute_changes() == []
    loop.advance(2.2)                                # third parcel in: full
    assert loop.take_chute_changes() == [(1, "full")]
    loop.advance(2.3)                                # fourth arrives at a full chute
    assert [c[2] for c in loop.take_confirmations()] == ["sorted"] * 3 + ["failed_divert"]
    snap = loop.snapshot()
    assert snap["chutes"][1] == {"state": "full", "fill": 3, "capacity": 3, "diverted": 3,
                                 "emptied": 0}
    loop.advance(32.19)
    assert loop.take_chute_changes() == []
    loop.advance(32.2)                               # 30 s after it went full
    assert loop.take_chute_changes() == [(1, "available")]
    assert loop.snapshot()["chutes"][1]["fill"] == 0
    assert loop.counts["emptied"] == 1


def test_continuous_draining_resumes_at_resume_fill():
    loop = make(capacity=4, empty_after_s=None, drain_per_s=1.0, resume_fill=0.5)
    for i in range(4):
        loop.on_decision(i, 1, 0.0)
    loop.advance(2.0)
    assert loop.take_chute_changes() == [(1, "full")]
    loop.advance(3.99)                               # one parcel drained: 3 > 2
    assert loop.take_chute_changes() == [] and loop.snapshot()["chutes"][1]["fill"] == 3
    loop.advance(4.0)                                # two drained: 2 <= 4 * 0.5
    assert loop.take_chute_changes() == [(1, "available")]
    loop.advance(100.0)
    assert loop.snapshot()["chutes"][1]["fill"] == 0


def test_decision_for_a_chute_that_went_full_mid_travel_is_not_diverted():
    clock = Clock()
    lb = LoopBack(clock=clock)
    loop = make(capacity=2, loopback=lb)
    for pid, t in ((1, 0.0), (2, 0.1), (3, 0.2)):    # chute 5 is available for all three
        clock.t = t
        loop.on_decision(pid, 5, t)
    at(loop, clock, 6.5)
    assert loop.take_confirmations() == [(1, 5, "sorted"), (2, 5, "sorted"),
                                         (3, 0, "failed_divert")]
    assert loop.take_chute_changes() == [(5, "full")]
    assert loop.counts["refused_diverts"] == 1 and loop.counts["failed_diverts"] == 0
    assert loop.on_loop == 1                         # parcel 3 goes round
    at(loop, clock, 0.2 + LOOP_TIME - 0.01)
    assert lb.due() == []
    at(loop, clock, 0.2 + LOOP_TIME)
    assert lb.due() == [3]
    assert loop.on_loop == 0


def test_chute_disabled_mid_travel_and_enabled_again():
    loop = make()
    loop.on_decision(1, 3, 0.0)                      # arrives at 4 s
    loop.disable(3, now_s=1.0)
    assert loop.take_chute_changes() == [(3, "disabled")]
    loop.advance(4.0)
    assert loop.take_confirmations() == [(1, 0, "failed_divert")]
    loop.enable(3, now_s=5.0)
    assert loop.take_chute_changes() == [(3, "available")]
    loop.on_decision(2, 3, 5.0)
    loop.advance(9.0)
    assert loop.take_confirmations() == [(2, 3, "sorted")]


def test_chute_zero_parcels_come_back_after_one_loop_time():
    clock = Clock()
    lb = LoopBack(clock=clock)
    loop = make(loopback=lb)
    batch = wire.decode_decisions(wire.encode_decisions(
        "v1", np.array([7, 8], np.uint64), np.array([1, 2], np.uint64),
        np.array([1, 2], np.uint64), np.array([0, 0], np.uint16), ["recirculate", "late"],
        np.array([1, 1], np.uint16)))
    loop.on_decisions(batch, 0.0)
    assert loop.on_loop == 2 and loop.counts["recirculated"] == 2
    at(loop, clock, LOOP_TIME - 0.01)
    assert lb.due() == [] and loop.take_confirmations() == []   # no divert, nothing to confirm
    at(loop, clock, LOOP_TIME)
    assert sorted(lb.due()) == [7, 8]
    assert loop.on_loop == 0 and loop.counts["returned"] == 2
    snap = loop.snapshot()
    assert snap["reasons"] == {"recirculate": 1, "late": 1} and snap["plan_version"] == "v1"


def test_failed_divert_goes_round_even_when_the_model_is_advanced_late():
    clock = Clock()
    lb = LoopBack(clock=clock)
    loop = make(loopback=lb, failed_divert_p=1.0)
    loop.on_decision(4, 1, 0.0)                      # divert point at 2 s
    at(loop, clock, 10.0)                            # processed late: still back at 19 s
    assert loop.take_confirmations() == [(4, 0, "failed_divert")]
    assert loop.counts["failed_diverts"] == 1
    clock.t = LOOP_TIME - 0.01
    assert lb.due() == []
    clock.t = LOOP_TIME
    assert lb.due() == [4]


def test_unknown_chute_is_not_diverted():
    loop = make()
    loop.on_decision(1, 4, 0.0)                      # spare chute: the machine does not manage it
    assert loop.take_confirmations() == [(1, 0, "failed_divert")]
    assert loop.counts["unknown_chute"] == 1 and loop.on_loop == 1


def _run(seed: int, p: float, n: int = 4000) -> tuple[SorterLoop, list]:
    loop = make(seed=seed, failed_divert_p=p, capacity=10**6)
    chutes = [1, 2, 3, 5]
    for i in range(n):
        loop.on_decision(i, chutes[i % 4], i * 0.01)
    loop.advance(n * 0.01 + 10)
    return loop, loop.take_confirmations()


def test_failed_divert_rate_is_seeded():
    loop, confirms = _run(seed=42, p=0.05)
    failed = sum(1 for c in confirms if c[2] == "failed_divert")
    assert loop.counts["failed_diverts"] == failed
    assert 140 <= failed <= 260                       # 4000 x 5 %, within 4.5 sigma
    assert loop.counts["sorted"] + failed == 4000
    assert _run(seed=42, p=0.05)[1] == confirms       # same seed: the same run
    assert _run(seed=43, p=0.05)[1] != confirms
    assert all(c[2] == "sorted" for c in _run(seed=42, p=0.0)[1])


def test_random_jams_disable_then_release_chutes_reproducibly():
    def run():
        loop = make(seed=5, jam_rate_per_h=360.0, jam_clear_s=20.0)   # one per 10 s on average
        loop.advance(600.0)
        return loop, loop.take_chute_changes()
    loop, changes = run()
    assert loop.counts["jams"] >= 20
    disabled = [c for c, s in changes if s == "disabled"]
    assert len(disabled) == loop.counts["jams"]
    for chute in set(disabled):                       # every jam is released or still running
        states = [s for c, s in changes if c == chute]
        assert all(a != b for a, b in zip(states, states[1:]))
    assert run()[1] == changes


def test_registry_counts_parcels_sorted_to_another_destination():
    reg = Registry()
    reg.add(Parcel(1, [b"x"], "postcode", "A"))
    reg.add(Parcel(2, [b"y"], "postcode", "B"))
    loop = make(registry=reg)
    loop.on_decision(1, 1, 0.0)
    loop.on_decision(2, 2, 0.0)                       # B's parcel into A's chute
    loop.advance(5.0)
    assert loop.counts["wrong_destination"] == 1


# -- the shell over sockets ---------------------------------------------------------------------

def _recv(sock, kind, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(100):
            header, payload = wire.decode_message(sock.recv())
            if header.kind == kind:
                return payload
    raise AssertionError(f"no {wire.KIND_NAMES[kind]} message")


def test_shell_announces_states_confirms_and_leaves_a_shared_context_open():
    ctx = zmq.Context()
    try:
        decisions = ctx.socket(zmq.PUSH)
        feedback = ctx.socket(zmq.PULL)
        for s in (decisions, feedback):
            s.setsockopt(zmq.LINGER, 0)
        decisions.bind("tcp://127.0.0.1:*")
        feedback.bind("tcp://127.0.0.1:*")
        sim = PlcSimulator(PLAN, decisions.getsockopt_string(zmq.LAST_ENDPOINT),
                           feedback.getsockopt_string(zmq.LAST_ENDPOINT), context=ctx,
                           disabled=(9,), failed_divert_p=0.0, first_chute_m=0.1,
                           chute_spacing_m=0.01, speed_mps=2.5)
        sim.start()
        try:
            status = _recv(feedback, wire.CHUTE_STATUS)
            assert status.items() == [(1, "available"), (2, "available"), (3, "available"),
                                      (5, "available"), (9, "disabled"), (10, "available")]
            decisions.send(wire.encode_heartbeat())
            decisions.send(wire.encode_decisions(
                "v1", np.array([11, 12], np.uint64), np.array([1, 2], np.uint64),
                np.array([1, 2], np.uint64), np.array([1, 0], np.uint16),
                ["sorted", "recirculate"], np.array([1, 1], np.uint16)))
            confirm = _recv(feedback, wire.SORT_CONFIRM)
            assert confirm.parcel_id.tolist() == [11] and confirm.outcome_names() == ["sorted"]
            assert sim.last_engine_heartbeat is not None and sim.engine_alive()
            snap = sim.snapshot()
            assert snap["counts"]["decisions"] == 2 and snap["link"]["engine_heartbeats"] == 1
        finally:
            sim.stop()
        assert not sim.running and not ctx.closed
    finally:
        ctx.destroy(linger=0)


# -- the shell against a real engine ---------------------------------------------------------------

def test_against_a_real_engine(tmp_path):
    engine = EngineProcess(tmp_path)
    sim = None
    try:
        engine.plc.close(0)            # PUSH round-robins: the simulator must be the only PULL
        time.sleep(0.2)
        plan = load_plan()
        lb = LoopBack()
        sim = PlcSimulator(plan, engine.endpoints["decisions"], engine.endpoints["feedback"],
                           loopback=lb, seed=1, capacity=3, empty_after_s=None,
                           failed_divert_p=0.0, first_chute_m=0.5, chute_spacing_m=0.01,
                           return_m=0.5, speed_mps=2.5)
        sim.start()
        n = len(plan_chutes(plan))
        engine.wait_until(lambda s: s["counters"]["chute_status_updates"] >= n)
        deadline = time.monotonic() + 5
        while sim.last_engine_heartbeat is None:        # connected: decisions will reach us
            assert time.monotonic() < deadline, "no engine heartbeat"
            time.sleep(0.05)

        # ALMATY_CITY = chutes 5, 6 (fill_first): five parcels all decided for chute 5
        engine.send_scans([[b"050010"]] * 5)
        status = engine.wait_until(lambda s: s["counters"]["confirmations"]["failed_divert"] == 2)
        assert status["chutes_unavailable"] == {"5": "full"}
        assert status["counters"]["confirmations"]["sorted"] == 3

        engine.send_scans([[b"050010"]] * 3, first_parcel=10)       # now chute 6
        status = engine.wait_until(lambda s: s["counters"]["confirmations"]["sorted"] == 6)
        assert status["chutes_unavailable"] == {"5": "full", "6": "full"}

        engine.send_scans([[b"050010"]] * 4, first_parcel=20)       # nothing left: recirculate
        status = engine.wait_until(lambda s: s["counters"]["decisions"]["recirculate"] == 4)
        deadline = time.monotonic() + 10
        while sim.snapshot()["counts"]["decisions"] < 12:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        snap = sim.snapshot()
        assert snap["reasons"] == {"sorted": 8, "recirculate": 4}
        assert snap["chutes"][5]["fill"] == 3 and snap["chutes"][6]["fill"] == 3

        back: set[int] = set()                           # refused and recirculated come round
        deadline = time.monotonic() + 10
        while back != {3, 4, 20, 21, 22, 23}:
            assert time.monotonic() < deadline, back
            back.update(lb.due())
            time.sleep(0.05)
    finally:
        if sim is not None:
            sim.stop()
        assert engine.stop() == 0
