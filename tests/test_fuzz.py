"""Fuzzing the wire decoder and the control handler with hypothesis (docs/engine.md, "Fuzzing").

Arbitrary bytes and mutated valid messages go through every decoder the engine uses (a frame is
decoded, or refused with a WireError: never another exception, never a crash of the compiled
code, which would take this process down); arbitrary bytes and JSON go through the control
handler of a real Engine object (a reply, always, that the socket can send).

In the suite each property runs FUZZ_EXAMPLES examples (default 1000). The fuzzing run:

    FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest -q --timeout 0 tests/test_fuzz.py
"""
from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter import wire
from sorter.core.events import EventBatch
from sorter.engine.config import EngineConfig
from sorter.engine.process import Engine

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _valid_messages() -> list[bytes]:
    batch = EventBatch.from_reads([[b"RR473124829GB", b"]C1421398050010"], [], [b"050010"]],
                                  parcel_ids=np.arange(3, dtype=np.uint64),
                                  ts_ns=np.full(3, 1_700_000_000_000_000_000, np.int64))
    return [
        wire.encode_scan(batch, np.arange(3, dtype=np.uint64), batch_seq=7),
        wire.encode_decisions("v1", parcel_id=[1, 2], seq=[1, 2], decision_seq=[5, 6],
                              chute=[3, 0], reason=["sorted", "late"], scanner_id=[1, 1]),
        wire.encode_chute_status([17, 18], ["full", "available"]),
        wire.encode_sort_confirm([1, 2], [17, 0], ["sorted", "lost"]),
        wire.encode_heartbeat(9),
    ]


VALID = _valid_messages()


@st.composite
def mutated(draw) -> bytes:
    """A valid message with a few bytes changed, cut, or extended: past the header checks,
    into the body decoders."""
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "cut", "grow", "len"]))
        if op == "set" and frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            del frame[draw(st.integers(0, len(frame))):]
        elif op == "grow":
            frame += draw(st.binary(max_size=40))
        elif op == "len" and len(frame) >= 12:        # count or body_len: any u32
            at = draw(st.sampled_from([4, 8]))
            frame[at:at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(frame)


frames = st.one_of(st.binary(max_size=200), mutated())
LIMITS = wire.Limits(max_frame=4096)


@FUZZ
@given(frame=frames)
def test_fuzz_decode_message(frame):
    for limits in (wire.DEFAULT_LIMITS, LIMITS):
        try:
            header, payload = wire.decode_message(frame, limits=limits)
        except wire.WireError as e:
            assert e.code and isinstance(str(e), str)
        else:
            assert header.frame_len == len(frame)
        try:
            wire.annotate(frame, limits=limits)          # `python -m sorter.wire HEX`
        except wire.WireError:
            pass


@FUZZ
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_fuzz_decode_scans_as_the_engine_does(batch):
    """The engine's batch decode: each bad frame refused alone, the others decoded (a
    HEARTBEAT is welcome on the scans socket and carries no event)."""
    scans = wire.decode_scans(batch, limits=LIMITS)
    bad = {i for i, _ in scans.errors}
    events = 0
    for i, frame in enumerate(batch):
        try:
            events += len(wire.decode_scan(frame, limits=LIMITS))
            assert i not in bad
        except wire.WireError:
            try:
                wire.decode_heartbeat(frame, limits=LIMITS)
                assert i not in bad
            except wire.WireError:
                assert i in bad
    assert len(scans.seq) == events == len(scans.events.ts_ns)


# -- the control handler ---------------------------------------------------------------------------

_ENGINE: Engine | None = None


def _engine(tmp_path_factory) -> Engine:
    global _ENGINE
    if _ENGINE is None:
        plans = tmp_path_factory.mktemp("fuzz_plans")
        _ENGINE = Engine(EngineConfig(plan_dir=str(plans), metrics=""))
    return _ENGINE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=12)
requests_ = st.one_of(
    json_values,
    st.fixed_dictionaries({"cmd": st.sampled_from(["status", "set_chute", "load_plan", "stop",
                                                   "x"]) | json_values},
                          optional={"chute": st.integers() | st.floats() | json_values,
                                    "state": st.sampled_from(["full", "disabled", "available"])
                                    | json_values,
                                    "path": st.text(max_size=30) | json_values}))
bodies = st.one_of(requests_.map(lambda v: json.dumps(v).encode()), st.binary(max_size=80),
                   st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))


@FUZZ
@given(parts=st.lists(bodies, min_size=0, max_size=3))
def test_fuzz_control_handler(tmp_path_factory, parts):
    engine = _engine(tmp_path_factory)
    reply = engine.control_handler.answer(parts, [b"id", b""])
    if reply is None:                            # a plan load: its reply is owed later
        assert len(parts) == 1
        return
    assert isinstance(reply["ok"], bool)
    assert reply["ok"] or isinstance(reply["error"], str)
    json.dumps(reply, default=str)               # what _send does: it can always be sent


@FUZZ
@given(path=st.one_of(st.text(max_size=40), st.sampled_from([
    "plan.toml", "nul.toml", "devzero.toml", "fifo", "zero", "dir", "../x.toml", "/dev/zero", "/etc/passwd", ".", "",
    "link/plan.toml", "plan.toml/..", "./plan.toml", "dir/../plan.toml", "\x00"])))
def test_fuzz_plan_files(tmp_path_factory, path):
    """Whatever path a load_plan names: a regular file below plan_dir, or a RequestError."""
    from sorter.engine.control import RequestError, check_plan_files
    root = _plan_dir(tmp_path_factory)
    try:
        got = check_plan_files(path, str(root), 4096)
    except RequestError as e:
        assert str(e)
    else:
        assert got.is_file() and root.resolve() in got.parents and got.stat().st_size <= 4096


_ROOT = []


def _plan_dir(tmp_path_factory):
    if not _ROOT:
        root = tmp_path_factory.mktemp("fuzz_plan_dir")
        (root / "plan.toml").write_text('[files]\nmanifest = "m.csv"\n')
        (root / "nul.toml").write_text('[files]\nmanifest = "a\\u0000b"\n')
        (root / "devzero.toml").write_text('[files]\nmanifest = "/dev/zero"\n')
        os.mkfifo(root / "fifo")
        (root / "zero").symlink_to("/dev/zero")
        (root / "dir").mkdir()
        (root / "link").symlink_to(root)
        _ROOT.append(root)
    return _ROOT[0]
