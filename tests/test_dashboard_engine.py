"""What the engine exports for the chute wall: the `chutes` key of `status` and the per-chute
Prometheus series, on a real engine process; and the per-chute count against an oracle."""
from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter

import numpy as np
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sorter import wire
from sorter.core.codes import CHUTE_STATES
from sorter.engine.metrics import ChuteCounts, chute_table
from sorter.plan import load_plan
from engine_harness import ROOT, EngineProcess, flatten


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_status_lists_every_chute_in_plan_order_with_state_destination_and_decisions(tmp_path):
    plan = load_plan()
    engine = EngineProcess(tmp_path)
    try:
        # 050010 is Almaty city (chutes 5, 6 fill first), an empty read list is a no-read (76)
        reads = [[b"050010"]] * 7 + [[]] * 3
        engine.send_scans(reads)
        got = flatten(engine.receive_decisions(len(reads)))
        sent = Counter(int(c) for c in got["chute"])
        engine.feedback.send(wire.encode_chute_status([6, 12], ["full", "disabled"]))
        status = engine.wait_until(lambda s: s["chutes_unavailable"] == {"6": "full",
                                                                        "12": "disabled"})
        chutes = status["chutes"]
        assert [c["chute"] for c in chutes] == list(plan.chutes)
        by = {c["chute"]: c for c in chutes}
        assert by[5]["destination"] == "ALMATY_CITY" and by[5]["special"] == []
        assert by[76]["destination"] is None and set(by[76]["special"]) == {"no_read", "invalid"}
        assert by[79]["destination"] is None and by[79]["special"] == []      # a spare chute
        assert {c: by[c]["state"] for c in (5, 6, 12)} == {5: "available", 6: "full",
                                                           12: "disabled"}
        assert all(c["state"] in CHUTE_STATES for c in chutes)
        assert {c["chute"]: c["decisions"] for c in chutes if c["decisions"]} == dict(sent)
        assert sent[5] == 7 and sent[76] == 3
        # the keys that were there before stay
        assert {"plan", "decision_seq", "uptime_s", "endpoints", "counters"} <= set(status)

        metrics = scrape(engine.endpoints["metrics"])
        for c in plan.chutes:
            assert metrics[("sorter_chute_decisions_total", (("chute", str(c)),))] == sent[c]
        state = {dict(k[1])["chute"]: (v, dict(k[1])["destination"])
                 for k, v in metrics.items() if k[0] == "sorter_chute_state"}
        assert len(state) == len(plan.chutes)
        assert state["5"] == (0, "ALMATY_CITY")
        assert state["6"] == (CHUTE_STATES.index("full"), "ALMATY_CITY")
        assert state["12"][0] == CHUTE_STATES.index("disabled")
        assert state["76"][1] == "special: no_read, invalid"
        assert state["79"][1] == "spare"
    finally:
        assert engine.stop() == 0


def test_since_emptied_starts_over_when_a_full_chute_is_available_again(tmp_path):
    engine = EngineProcess(tmp_path)
    try:
        engine.send_scans([[b"050010"]] * 4, first_parcel=0)       # fill first: all to 5
        engine.receive_decisions(4)
        s = engine.wait_until(lambda s: s["counters"]["events"] == 4)
        assert _chute(s, 5)["since_emptied"] == 4
        engine.feedback.send(wire.encode_chute_status([5], ["full"]))
        engine.wait_until(lambda s: _chute(s, 5)["state"] == "full")
        engine.send_scans([[b"050010"]] * 2, first_parcel=10)      # 5 is full: they go to 6
        assert set(flatten(engine.receive_decisions(2))["chute"].tolist()) == {6}
        engine.feedback.send(wire.encode_chute_status([5], ["available"]))   # emptied
        s = engine.wait_until(lambda s: _chute(s, 5)["state"] == "available")
        assert _chute(s, 5)["since_emptied"] == 0 and _chute(s, 5)["decisions"] == 4
        engine.send_scans([[b"050010"]] * 3, first_parcel=20)
        engine.receive_decisions(3)
        s = engine.wait_until(lambda s: s["counters"]["events"] == 9)
        assert (_chute(s, 5)["since_emptied"], _chute(s, 5)["decisions"]) == (3, 7)
        # disabled and enabled again is not an emptying
        engine.feedback.send(wire.encode_chute_status([5], ["disabled"]))
        engine.wait_until(lambda s: _chute(s, 5)["state"] == "disabled")
        engine.feedback.send(wire.encode_chute_status([5], ["available"]))
        s = engine.wait_until(lambda s: _chute(s, 5)["state"] == "available")
        assert _chute(s, 5)["since_emptied"] == 3
        metrics = scrape(engine.endpoints["metrics"])
        assert metrics[("sorter_chute_decisions_since_emptied", (("chute", "5"),))] == 3
        assert metrics[("sorter_chute_decisions_total", (("chute", "6"),))] == 2
    finally:
        assert engine.stop() == 0


def _chute(status: dict, n: int) -> dict:
    return next(c for c in status["chutes"] if c["chute"] == n)


def test_chute_table_follows_the_plan():
    plan = load_plan()
    table = chute_table(plan)
    assert [c for c, _, _ in table] == list(plan.chutes)
    for d in plan.destinations:
        for c in d.chutes:
            assert d.name in dict((c_, dest) for c_, dest, _ in table)[c].split(" / ")
    assert chute_table(plan) is table          # kept for the running plan


folds = st.lists(st.tuples(
    st.lists(st.integers(0, 40), max_size=30),                     # chutes of the folded events
    st.dictionaries(st.integers(1, 40), st.sampled_from(range(3)), max_size=5)),   # state changes
    max_size=20)


@settings(max_examples=200, deadline=None)
@given(folds)
def test_chute_counts_equal_counting_one_by_one(sequence):
    """Per fold: events routed, then states seen. The oracle counts event by event and starts
    a chute over when its state goes full -> available between two folds."""
    counts = ChuteCounts()
    states = np.zeros(65536, np.uint8)
    total, since, last = Counter(), Counter(), {}
    for chutes, changes in sequence:
        for c, s in changes.items():
            states[c] = s
        counts.fold(np.array(chutes, np.uint16), states.copy())
        for c in range(41):
            now = int(states[c])
            if last.get(c, 0) == 2 and now == 0:
                since[c] = 0
            last[c] = now
        for c in chutes:
            total[c] += 1
            since[c] += 1
    for c in range(41):
        assert counts.decisions[c] == total[c]
        assert counts.since_emptied(c) == since[c]


def test_grafana_dashboard_queries_only_series_the_engine_exports(tmp_path):
    """docs/grafana-chute-wall.json cannot drift from the metric names: every sorter_* name in
    its queries is on a real engine's /metrics page, and the per-chute panels are there."""
    board = json.loads((ROOT / "docs" / "grafana-chute-wall.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    names = set(re.findall(r"\b(sorter_[a-z_]+)", " ".join(exprs)))
    assert {"sorter_chute_state", "sorter_chute_decisions_total",
            "sorter_chute_decisions_since_emptied"} <= names
    engine = EngineProcess(tmp_path)
    try:
        engine.send_scans([[b"050010"]])
        engine.receive_decisions(1)
        engine.wait_until(lambda s: s["counters"]["events"] == 1)
        exported = {name for name, _ in scrape(engine.endpoints["metrics"])}
    finally:
        assert engine.stop() == 0
    assert names <= exported, names - exported
