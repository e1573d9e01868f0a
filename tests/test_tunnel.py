"""The tunnel simulator: a reproducible population consistent with the plan, the rates it
promises, and what a real engine decides for its parcels, straight over ZeroMQ or through a
preset's TCP telegrams and a scanner driver."""
from __future__ import annotations

import time
from collections import Counter

import pytest
import zmq

from scanners.driver import ScannerDriver
from scanners.framing import load_format
from simulators.model import LoopBack, Registry
from simulators.population import Population
from simulators.tunnel import Scan, TcpTelegramOutput, TunnelSimulator, ZmqOutput, main
from sorter import wire
from sorter.core.barcodes import decode
from sorter.plan import load_plan
from sorter.core.reference import ReferenceRouter

from engine_harness import EngineProcess

PLAN = load_plan()
CHUTES = {d.name: set(d.chutes) for d in PLAN.destinations}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = EngineProcess(tmp_path_factory.mktemp("tunnel-engine"))
    yield e
    assert e.stop() == 0


def decisions_for(engine: EngineProcess, scanner_id: int, n: int, timeout_s: float = 30):
    """{parcel id: [(reason, chute), ...]} of n decisions for this scanner id."""
    out: dict[int, list[tuple[str, int]]] = {}
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < n and time.monotonic() < deadline:
        header, payload = wire.decode_message(engine.plc.recv())
        if header.kind != wire.DECISION:
            continue
        for pid, reason, chute, sid in zip(payload.parcel_id.tolist(), payload.reason_names(),
                                           payload.chute.tolist(), payload.scanner_id.tolist()):
            if sid == scanner_id:
                out.setdefault(pid, []).append((reason, chute))
                got += 1
    return out


# ---------------------------------------------------------------------------------------------
# Population


def test_population_is_reproducible_for_a_seed():
    a = Population(PLAN, seed=11, multi_label_rate=0.2).parcels(300)
    b = Population(PLAN, seed=11, multi_label_rate=0.2).parcels(300)
    assert a == b
    c = Population(PLAN, seed=12, multi_label_rate=0.2).parcels(300)
    assert a != c
    # a parcel depends on (seed, id) only, not on what was made before it
    late = Population(PLAN, seed=11, multi_label_rate=0.2)
    assert [late.make(i) for i in (250, 3, 77)] == [a[249], a[2], a[76]]


def test_rates_are_honoured_approximately():
    n = 6000
    pop = Population(PLAN, seed=5, read_rate=0.985, multi_label_rate=0.1, damaged_rate=0.03,
                     unknown_rate=0.05)
    parcels = pop.parcels(n)
    read = sum(1 for p in parcels if p.reads) / n
    assert abs(read - 0.985) < 0.006                         # binomial sd 0.0016
    kinds = Counter(pop.kinds.values())
    assert abs(kinds["damaged"] / n - 0.03) < 0.01
    assert abs(kinds["unknown"] / n - 0.05) < 0.012
    multi = sum(1 for labels in pop.labels.values() if len(labels) > 1) / n
    assert abs(multi - 0.1 * (1 - 0.08)) < 0.015
    # every sortable kind of the plan shows up
    assert {"s10_advised", "sscc_advised", "gs1_420", "gs1_421", "postcode_old",
            "postcode_new", "ems"} <= set(kinds)


def test_labels_are_what_they_claim_to_be():
    pop = Population(PLAN, seed=9, multi_label_rate=0.2, damaged_rate=0.05, unknown_rate=0.05)
    reference = ReferenceRouter(PLAN)
    manifest = set(PLAN.manifest.column("item_id").to_pylist())
    for parcel in pop.parcels(1500):
        labels, kind = pop.labels[parcel.parcel_id], pop.kinds[parcel.parcel_id]
        decoded = [decode(label) for label in labels]
        reason = reference.decide(labels)[1]
        if kind == "damaged":
            assert not any(r.valid for r in decoded) and parcel.expected_destination is None
            continue
        assert all(r.valid for r in decoded), (parcel, [r.error_name for r in decoded])
        if kind == "unknown":
            assert parcel.expected_destination is None and reason == 4   # unknown_destination
            continue
        assert parcel.expected_destination is not None, parcel
        first = decoded[0] if len(labels) == 1 else None
        if kind == "s10_advised" and first:
            assert first.kind_name == "s10" and first.item_id in manifest
        if kind in ("gs1_420", "gs1_421", "sscc_advised") and first:
            assert labels[0].startswith(b"]C100") and first.kind_name == "gs1"
        if kind in ("postcode_old", "postcode_new") and first:
            assert first.kind_name == "postcode"
        if kind == "ems":
            assert parcel.expected_destination == "EMS"
        # every label of a multi-label parcel agrees, or names no destination
        for label in labels:
            dest = reference.decide([label])[2]
            assert dest < 0 or PLAN.destinations[dest].name == parcel.expected_destination


def test_scans_draw_no_reads_and_missed_labels():
    pop = Population(PLAN, seed=2, multi_label_rate=1.0, label_miss_rate=0.3, read_rate=0.9)
    pop.parcels(400)
    slots = [pop.scan_slots(pid, 0) for pid in range(1, 401)]
    assert 0.85 < sum(1 for s in slots if s) / 400 < 0.95
    missed = sum(1 for s in slots if s and None in s)
    assert missed > 40
    assert all(any(x is not None for x in s) for s in slots if s)   # a read reads something
    assert pop.scan_slots(7, 3) == pop.scan_slots(7, 3)             # per pass, reproducible


# ---------------------------------------------------------------------------------------------
# Expected destinations against a real engine


def check_decisions(registry: Registry, decided: dict[int, list[tuple[str, int]]]) -> Counter:
    """Each parcel decided once, and what the engine decided fits what the parcel is."""
    outcome = Counter()
    for pid, items in decided.items():
        assert len(items) == 1, (pid, items)
        (reason, chute), parcel = items[0], registry.get(pid)
        expected = parcel.expected_destination
        if not parcel.reads:
            assert reason == "no_read", parcel
        elif expected is None:
            assert reason in ("invalid", "unknown_destination"), (parcel, reason)
        elif reason == "sorted":
            assert chute in CHUTES[expected], (parcel, chute)
        else:
            # a multi-label parcel of which only the label with no destination was read
            assert reason == "unknown_destination" and len(parcel.reads) == 1, (parcel, reason)
        outcome[reason] += 1
    return outcome


def test_expected_destinations_match_the_engine_over_zeromq(engine):
    registry = Registry()
    output = ZmqOutput(engine.endpoints["scans"], scanner_id=201)
    tunnel = TunnelSimulator(PLAN, rate_per_s=5000, seed=21, registry=registry, output=output,
                             multi_label_rate=0.15, damaged_rate=0.03, unknown_rate=0.04)
    try:
        counters = tunnel.run(max_parcels=600)
        decided = decisions_for(engine, 201, 600)
    finally:
        output.close()
    assert counters["parcels"] == 600 and output.sent == 600
    assert sorted(decided) == list(range(1, 601))
    outcome = check_decisions(registry, decided)
    assert outcome["sorted"] > 500 and outcome["no_read"] >= 1 and outcome["invalid"] >= 1


@pytest.mark.parametrize("preset", ["sick_clv", "datalogic_multilabel", "generic_fixed"])
def test_tunnel_through_tcp_telegrams_and_a_driver(engine, preset):
    fmt = load_format(preset)
    sid = 210 + ["sick_clv", "datalogic_multilabel", "generic_fixed"].index(preset)
    registry = Registry()
    output = TcpTelegramOutput(fmt)                 # listens, like a SICK scanner
    driver = ScannerDriver(fmt, sid, engine.endpoints["scans"], connect=output.address,
                           silence_timeout_s=0).start()
    tunnel = TunnelSimulator(PLAN, rate_per_s=3000, seed=sid, registry=registry, output=output,
                             multi_label_rate=0.2)
    try:
        tunnel.run(max_parcels=300)
        decided = decisions_for(engine, sid, 300)
    finally:
        driver.stop()
        output.close()
    assert sorted(decided) == list(range(1, 301))       # ids agree, with or without an index
    check_decisions(registry, decided)
    assert driver.counters["events"] == 300 and driver.counters["garbage"] == 0
    assert driver.counters["partial_no_reads"] == sum(
        1 for pid in range(1, 301) for s in tunnel.population.scan_slots(pid, 0) if s is None)


# ---------------------------------------------------------------------------------------------
# Rescans, schedule, outputs


def pull_socket():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def test_loopback_parcels_are_rescanned_with_one_more_recirculation():
    sock, endpoint = pull_socket()
    registry, loopback = Registry(), LoopBack()
    output = ZmqOutput(endpoint, scanner_id=3)
    tunnel = TunnelSimulator(PLAN, rate_per_s=1000, seed=4, registry=registry,
                             loopback=loopback, output=output)
    try:
        output.send(tunnel.new_scans(5))
        first = wire.decode_scan(sock.recv())
        assert first.events.parcel_ids.tolist() == [1, 2, 3, 4, 5]
        assert first.events.recirculations.tolist() == [0] * 5
        loopback.send_round(2, 0.0)
        loopback.send_round(4, 0.0)
        tunnel.start(duration_s=0.3)
        tunnel.join(5)
        scans = []
        while True:
            try:
                scans.append(wire.decode_scan(sock.recv(zmq.NOBLOCK)))
            except zmq.Again:
                break
        events = [(int(p), int(r)) for s in scans
                  for p, r in zip(s.events.parcel_ids, s.events.recirculations)]
        assert (2, 1) in events and (4, 1) in events
        assert registry.get(2).recirculations == 1 and registry.get(1).recirculations == 0
        assert tunnel.counters["rescans"] == 2
    finally:
        output.close()
        sock.close()


def test_rescans_get_new_ids_when_telegrams_carry_none():
    fmt = load_format("keyence")
    output = TcpTelegramOutput(fmt, wait_for_peer_s=0)
    registry = Registry()
    tunnel = TunnelSimulator(PLAN, seed=1, registry=registry, output=output, first_parcel_id=1)
    try:
        assert not tunnel.carries_identity
        tunnel.new_scans(3)
        (scan,) = tunnel.rescans([2])
        assert scan.parcel_id == 4 and scan.recirculations == 1      # what the driver will say
        assert registry.get(4).recirculations == 1 and registry.get(2).recirculations == 1
        assert registry.get(4).expected_destination == registry.get(2).expected_destination
        assert tunnel.first_id(4) == 2
        assert tunnel.rescans([99]) == [] and tunnel.counters["unknown_rescans"] == 1
    finally:
        output.close()


def test_open_loop_rate():
    sock, endpoint = pull_socket()
    output = ZmqOutput(endpoint)
    tunnel = TunnelSimulator(PLAN, rate_per_s=200, seed=1, output=output)
    try:
        counters = tunnel.run(duration_s=0.5)
    finally:
        output.close()
        sock.close()
    assert 85 <= counters["parcels"] <= 115


def test_tcp_output_counts_what_no_driver_took():
    output = TcpTelegramOutput(load_format("sick_clv"), wait_for_peer_s=0.05)
    try:
        output.send([Scan(1, [b"050010"])])
        assert output.unsent == 1 and output.sent == 0
    finally:
        output.close()


def test_tunnel_command_line():
    sock, endpoint = pull_socket()
    try:
        assert main(["--zmq", endpoint, "--parcels", "20", "--rate", "2000", "--seed", "3"]) == 0
        ids = []
        while len(ids) < 20:
            ids += wire.decode_scan(sock.recv()).events.parcel_ids.tolist()
        assert ids == list(range(1, 21))
    finally:
        sock.close()


def test_scan_the_format_cannot_express_goes_out_as_a_no_read():
    fmt = load_format("generic_fixed")               # three slots of 48 characters
    output = TcpTelegramOutput(fmt, wait_for_peer_s=0)
    try:
        data = output.telegrams([Scan(5, [b"A" * 60]), Scan(6, [b"050010"] * 4),
                                 Scan(7, [b"050010"])])
    finally:
        output.close()
    assert output.unexpressible == 2
    assert data.count(b"NOREAD") == 2 and data.count(b"\x02") == 3
