"""Micro-benchmarks of the small hot functions (pytest-benchmark): decode one S10, decode one GS1
message, one longest-prefix lookup, each in the compiled core and in the reference.

    pytest tests/test_microbench.py --benchmark-enable --benchmark-only        # timed
    pytest tests/test_microbench.py --benchmark-enable --benchmark-only --benchmark-autosave
    pytest tests/test_microbench.py --benchmark-enable --benchmark-only --benchmark-compare

pyproject sets `--benchmark-disable` (hence `--benchmark-enable` above: pytest-benchmark
refuses `--benchmark-only` while disabled): in a normal test run every benchmarked call runs
once as a plain test. The core's decode goes through `sorter.core._core.decode_reads`, the tool
entry point, so its time is mostly the call and its six output arrays, not the decoding. Either way each test checks the result it measured, so a fast wrong answer
fails.
"""
from __future__ import annotations

import numpy as np
import pytest

from sorter.core import _core
from sorter.core.barcodes import decode, gs1_check_digit, item_key
from sorter.core.codes import KIND_GS1, KIND_S10
from sorter.core.countries import alpha2_to_numeric
from sorter.plan import load_plan
from sorter.core.reference import ReferenceRouter
from sorter.core.router import compile_plan

HOME = alpha2_to_numeric("KZ")
S10 = b"RR473124829GB"
_SSCC17 = "34870000100000012"
SSCC = _SSCC17 + str(gs1_check_digit(_SSCC17))
GS1 = b"]C100" + SSCC.encode() + b"\x1d421398050012"


def _one_read(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    return np.array([0, len(raw)], np.int32), np.frombuffer(raw, np.uint8).copy()


@pytest.fixture(scope="module")
def plan():
    return load_plan()


@pytest.fixture(scope="module")
def postcode(plan):
    """A postcode under the bundled plan's longest prefix, and that prefix's destination."""
    prefix = max(plan.postcode_rules, key=lambda p: (len(p.replace(" ", "")), p))
    p = prefix.replace(" ", "")
    code = (p + "0123456")[:6] if p.isdigit() else (p + "00A0A0A")[:7]
    return code.encode(), plan.destination_ids()[plan.postcode_rules[prefix]]


def test_core_decode_one_s10(benchmark):
    offsets, data = _one_read(S10)
    out = benchmark(_core.decode_reads, offsets, data, HOME)
    assert out["kind"][0] == KIND_S10 and out["error"][0] == 0
    assert out["service"][0] == b"RR"
    assert int(out["item_key"][0]) == item_key(S10.decode())


def test_reference_decode_one_s10(benchmark):
    read = benchmark(decode, S10, HOME)
    assert read.valid and read.kind == KIND_S10
    assert (read.item_id, read.service, read.origin) == ("RR473124829GB", "RR", "GB")


def test_core_decode_one_gs1_message(benchmark):
    offsets, data = _one_read(GS1)
    out = benchmark(_core.decode_reads, offsets, data, HOME)
    assert out["kind"][0] == KIND_GS1 and out["error"][0] == 0
    assert out["dest_country"][0] == HOME
    assert out["postcode"][0] == b"050012"
    assert int(out["item_key"][0]) == item_key(SSCC)


def test_reference_decode_one_gs1_message(benchmark):
    read = benchmark(decode, GS1, HOME)
    assert read.valid and read.kind == KIND_GS1
    assert (read.item_id, read.dest_country, read.postcode) == (SSCC, HOME, "050012")


def test_core_prefix_lookup(benchmark, plan, postcode):
    compiled = compile_plan(plan)
    code, dest = postcode
    assert benchmark(compiled.lookup_postcode, code) == dest
    ref = ReferenceRouter(plan)
    unmatched = next(c for c in ("999999", "989898", "Q00AAAA", "W99ZZZZ")
                     if ref._longest_prefix(c) == -1)
    assert compiled.lookup_postcode(unmatched.encode()) == -1


def test_reference_prefix_lookup(benchmark, plan, postcode):
    ref = ReferenceRouter(plan)
    code, dest = postcode
    assert benchmark(ref._longest_prefix, code.decode()) == dest
