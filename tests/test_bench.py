"""Smoke tests of the benchmark harness (bench/): tiny sizes, no timed assertions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # bench/ is a top-level package of the checkout
    sys.path.insert(0, str(ROOT))

from bench import _count, main  # noqa: E402
from bench.synthetic import (CATEGORIES, gs1_check_digits, make_chute_states,  # noqa: E402
                             make_events, make_events_labelled, make_plan, s10_check_digits,
                             take)
from sorter.core.barcodes import decode  # noqa: E402
from sorter.core.codes import KIND_POSTCODE  # noqa: E402

TINY = ["--events", "20000", "--manifest-rows", "5000", "--prefixes", "300", "--chutes", "60",
        "--reference-events", "20000", "--repeats", "1", "--batch", "4096", "--seed", "1"]


@pytest.fixture(scope="module")
def core_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "sub" / "core.json"
    assert main(["core", "--json", str(out), *TINY]) == 0
    return json.loads(out.read_text())


def test_core_suite_writes_the_promised_keys(core_result):
    for key in ("core_events_per_s", "reference_events_per_s", "ratio", "events",
                "reference_events", "manifest_rows", "prefixes", "chutes", "compile_s",
                "manifest_bytes", "reason_counts", "machine", "params"):
        assert key in core_result, key
    r = core_result
    assert r["suite"] == "core" and r["ok"] is True
    assert r["events"] == 20000 and r["reference_events"] == 20000
    assert r["manifest_rows"] == 5000 and r["prefixes"] == 300 and r["chutes"] == 60
    assert r["core_events_per_s"] > 0 and r["reference_events_per_s"] > 0 and r["ratio"] > 0
    assert r["manifest_bytes"] > 0 and r["compile_s"] >= 0
    assert set(r["core"]["batched"]) == {"4096"}
    for key in ("python", "platform", "cpu_count", "numpy", "pyarrow", "Cython"):
        assert key in r["machine"], key
    assert r["params"]["seed"] == 1 and r["params"]["repeats"] == 1
    assert sum(r["reason_counts"].values()) == r["events"]


def test_core_and_reference_agreed(core_result):
    assert core_result["agree"] is True
    assert core_result["disagreements"] == 0 and core_result["mismatches"] == []


def test_event_mix_reaches_every_intended_reason(core_result):
    for counts in (core_result["reason_counts"], core_result["reference_reason_counts"]):
        for reason in ("sorted", "no_read", "invalid", "conflict", "unknown_destination",
                       "recirculate", "overflow"):
            assert counts[reason] > 0, reason
        assert counts["late"] == 0 and counts["malformed"] == 0
    assert set(core_result["profile"]["by_category"]) == set(CATEGORIES)


def test_quick_flag_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["core", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--json", "--quick", "--seed", "--events", "--reference-events", "--batch"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["no-such-suite"])


def test_count_parser():
    assert _count("1_000_000") == 1_000_000
    assert _count("100k") == 100_000
    assert _count("1.5M") == 1_500_000
    assert _count("65536") == 65536


@pytest.fixture(scope="module")
def small_plan():
    return make_plan(n_prefixes=400, n_chutes=40, manifest_rows=3000, seed=3)


def test_plan_shape(small_plan):
    plan = small_plan
    prefixes = list(plan.postcode_rules)
    assert len(prefixes) == 400 and len(set(prefixes)) == 400
    for p, dest in plan.postcode_rules.items():          # not shadowed
        parents = [p[:k] for k in range(len(p) - 1, 0, -1) if p[:k] in plan.postcode_rules]
        if parents:
            assert plan.postcode_rules[parents[0]] != dest, p
        assert p.isascii() and p.isalnum() and (p.isdigit() or p.isupper()) and 2 <= len(p) <= 4
    assert any(p[0].isdigit() for p in prefixes) and any(p[0].isalpha() for p in prefixes)
    assert len(plan.chutes) == 40
    sizes = [len(d.chutes) for d in plan.destinations]
    assert min(sizes) >= 1 and max(sizes) <= 4
    assert {d.policy for d in plan.destinations} == {"fill_first", "round_robin"}
    grouped = [c for d in plan.destinations for c in d.chutes]
    assert len(grouped) == len(set(grouped))
    assert not set(plan.special.values()) & set(grouped)
    assert plan.service_rules == {"E": "EMS"}
    assert plan.country_rules["KZ"] and len(plan.country_rules) > 5
    names = {d.name for d in plan.destinations}
    assert set(plan.postcode_rules.values()) | set(plan.country_rules.values()) <= names
    validate = getattr(__import__("sorter.plan", fromlist=["validate"]), "validate", None)
    if validate is not None:
        assert [str(p) for p in validate(plan)] == []


def test_manifest_ids_are_valid_and_distinct(small_plan):
    ids = small_plan.manifest.column("item_id").to_pylist()
    assert len(ids) == 3000 and len(set(ids)) == 3000
    for item in ids:
        if len(item) == 13:
            read = decode(item.encode())
            assert read.valid and read.kind_name == "s10", item
            assert item[0] not in "JKSTW"
        else:
            assert len(item) == 18 and item.isdigit(), item
            assert int(item[17]) == gs1_check_digits(np.frombuffer(item[:17].encode(), np.uint8)
                                                     .reshape(1, 17))[0]
    # the check-digit helper against the UPU example RR473124829GB
    assert s10_check_digits(np.frombuffer(b"47312482", np.uint8).reshape(1, 8))[0] == 9


def test_events_are_deterministic_and_cover_every_read_error(small_plan):
    a = make_events(small_plan, 5000, seed=5)
    b = make_events(small_plan, 5000, seed=5)
    c = make_events(small_plan, 5000, seed=6)
    for field in ("event_offsets", "read_offsets", "data", "recirculations", "ts_ns"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.data[:1000], c.data[:1000])
    errors, kinds, spaced = set(), set(), 0
    for i in range(len(a)):
        for raw in a.reads(i):
            read = decode(raw)
            errors.add(read.error_name)
            kinds.add(read.kind_name)
            spaced += read.kind == KIND_POSTCODE and len(raw) == 8
    assert errors == {None, "bad_length", "bad_character", "bad_check_digit", "reserved_service",
                      "bad_ai_field", "unrecognised"}
    assert kinds == {"s10", "gs1", "postcode", "unknown"}
    assert spaced > 0


def test_event_categories_and_take(small_plan):
    batch, labels = make_events_labelled(small_plan, 3000, seed=2)
    counts = np.bincount(labels, minlength=len(CATEGORIES))
    assert counts.sum() == 3000 and (counts > 0).all()
    n_reads = np.diff(batch.event_offsets)
    assert (n_reads[labels == CATEGORIES.index("no_read")] == 0).all()
    assert (n_reads[labels == CATEGORIES.index("multi")] == 2).all()
    idx = np.array([5, 0, 2999, 17, 17])
    sub = take(batch, idx)
    assert len(sub) == 5
    for j, i in enumerate(idx):
        assert sub.reads(j) == batch.reads(i)


def test_chute_states_block_whole_destinations(small_plan):
    states = make_chute_states(small_plan, seed=3)
    assert set(states.values()) <= {"full", "disabled"}
    assert not set(states) & set(small_plan.special.values())
    assert any(all(states.get(c) for c in d.chutes) for d in small_plan.destinations)


def test_batch_views_route_like_one_call(small_plan):
    from bench.core import DEFAULT_BATCHES, _slices
    from sorter.core.router import Router

    assert DEFAULT_BATCHES == (1, 16, 256, 4096, 65_536)
    events = make_events(small_plan, 3000, seed=8)
    whole = Router(small_plan).route(events)
    router = Router(small_plan)                 # round-robin positions carry across calls
    parts = _slices(events, 7, limit=2000)
    assert len(parts) == 286 and sum(len(p) for p in parts) == 2000
    assert parts[3].event_offsets[0] == 0 and parts[3].reads(0) == events.reads(21)
    got = [router.route(p) for p in parts]
    for field in ("chute", "reason", "destination"):
        joined = np.concatenate([getattr(d, field) for d in got])
        assert np.array_equal(joined, getattr(whole, field)[:2000]), field
