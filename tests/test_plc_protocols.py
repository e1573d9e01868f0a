"""The PLC gateway's OPC UA and Modbus TCP sides against the simulated PLCs: real asyncua and
pymodbus servers on 127.0.0.1, real ZeroMQ sockets standing in for the engine. The raw-client
tests follow docs/plc.md's node model and register map to the letter, as a PLC programmer would."""
from __future__ import annotations

import asyncio
import time

import pytest

from plc.modbus import ModbusGateway, from_words, words64
from plc.models import ModelError, load_nodes, load_registers
from plc.opcua import OpcUaGateway
from simulators.plc_modbus import ModbusPlc
from simulators.plc_opcua import OpcUaPlc
from sorter.plan import Destination, Plan
from test_plc import FakeEngine, wait

PLAN = Plan(name="t", version="v1", home_country="KZ", chutes=tuple(range(1, 11)),
            special={"no_read": 9, "invalid": 9, "conflict": 10, "unknown_destination": 10,
                     "overflow": 10},
            destinations=[Destination("A", (1, 2)), Destination("B", (3,)),
                          Destination("C", (5,))])
FAST = dict(speed_mps=100.0, first_chute_m=1.0, chute_spacing_m=0.1, return_m=1.0,
            failed_divert_p=0.0, capacity=100_000)


@pytest.fixture
def engine():
    e = FakeEngine()
    yield e
    e.close()


@pytest.fixture(scope="module")
def opcua_plc():
    sim = OpcUaPlc(PLAN, disabled=(3,), **FAST).start()
    yield sim
    sim.stop()


def _gateways(kind, sim, engine, **kw):
    if kind == "opcua":
        return OpcUaGateway(sim.url, engine.decisions, engine.feedback, sim.model, **kw)
    return ModbusGateway("127.0.0.1", sim.port, engine.decisions, engine.feedback, sim.regs, **kw)


@pytest.fixture
def modbus_plc():
    sim = ModbusPlc(PLAN, disabled=(3,), **FAST).start()
    yield sim
    sim.stop()


@pytest.fixture(params=["opcua", "modbus"])
def plc_sim(request):
    if request.param == "opcua":
        yield "opcua", request.getfixturevalue("opcua_plc")
    else:
        yield "modbus", request.getfixturevalue("modbus_plc")


def test_handshake_delivers_every_instruction_once_in_order_and_reports_come_back(plc_sim, engine):
    kind, sim = plc_sim
    with sim.lock:
        start = len(sim.instructions)
    gw = _gateways(kind, sim, engine, max_age_s=None).start()
    try:
        assert gw.connected.wait(20)
        time.sleep(0.2)
        ids = list(range(10_000, 10_300))           # more than a ring or mailbox holds
        engine.send(ids, chute=5)
        assert engine.collect(lambda: len({c[0] for c in engine.confirms} & set(ids)) == 300, 30)
        with sim.lock:
            assert sim.instructions[start:] == ids
        assert {(p, c, o) for p, c, o in engine.confirms if p in set(ids)} == \
            {(i, 5, "sorted") for i in ids}
        # the full chute status reached the engine: chute 3 is disabled on this PLC
        assert (3, "disabled") in engine.states and (5, "available") in engine.states
        # a change on the PLC reaches the engine
        with sim.lock:
            sim.machine.loop.disable(2)
        assert engine.collect(lambda: (2, "disabled") in engine.states, 10)
        with sim.lock:
            sim.machine.loop.enable(2)
        assert engine.collect(lambda: engine.states[-1] == (2, "available"), 10)
        # a decision for a chute the machine refuses comes back as failed_divert
        engine.send([20_000], chute=3)
        assert engine.collect(lambda: (20_000, 0, "failed_divert") in engine.confirms, 10)
    finally:
        gw.stop()
    snap = gw.snapshot()
    assert snap["link_downs"] == 0 and snap["stale_dropped"] == 0


def test_plc_silent_life_timeout_then_reconnect(plc_sim, engine):
    kind, sim = plc_sim
    gw = _gateways(kind, sim, engine, max_age_s=None, backoff_initial_s=0.05).start()
    try:
        assert gw.connected.wait(20)
        sim.silent = True
        assert wait(lambda: gw.snapshot()["life_timeouts"] >= 1, 10)
        sim.silent = False
        assert wait(lambda: gw.snapshot()["connections"] >= 2 and gw.snapshot()["link_up"], 20)
        engine.send([30_001], chute=5)
        assert engine.collect(lambda: (30_001, 5, "sorted") in engine.confirms, 10)
    finally:
        sim.silent = False
        gw.stop()


def test_stale_decisions_never_reach_the_plc(plc_sim, engine):
    kind, sim = plc_sim
    gw = _gateways(kind, sim, engine, max_age_s=0.3).start()
    try:
        assert gw.connected.wait(20)
        time.sleep(0.2)
        sim.silent = True                          # the PLC stops taking instructions
        stale = list(range(40_000, 40_200))
        engine.send(stale, chute=5)
        assert wait(lambda: gw.snapshot()["decisions"] >= 200, 5)
        time.sleep(0.6)
        sim.silent = False
        engine.send([40_999], chute=5)
        assert engine.collect(lambda: (40_999, 5, "sorted") in engine.confirms, 20)
        assert wait(lambda: gw.snapshot()["waiting"] == 0, 10)
        with sim.lock:
            taken = set(sim.instructions)
        snap = gw.snapshot()
        # at most one ring or mailbox-full went out before the PLC stopped taking them
        slots = sim.model.instruction_slots if kind == "opcua" else sim.regs.instruction_slots
        assert snap["stale_dropped"] >= 200 - slots
        assert len(taken & set(stale)) + snap["stale_dropped"] == 200
    finally:
        sim.silent = False
        gw.stop()


# -- the documented node model and register map, driven by a plain client ---------------------

def test_opcua_node_model_by_hand(opcua_plc):
    from asyncua import Client, ua
    m = opcua_plc.model

    async def run():
        async with Client(opcua_plc.url) as c:
            w = c.get_node(m.instruction_write_index)
            r = c.get_node(m.instruction_read_index)
            written = await w.read_value()
            assert await r.read_value() == written   # nothing pending
            slot = written % m.instruction_slots
            vals = [("TrackingId", 777, ua.VariantType.UInt64), ("Chute", 5, ua.VariantType.UInt16),
                    ("AltChute", 0, ua.VariantType.UInt16), ("Reason", 0, ua.VariantType.Byte),
                    ("Seq", written + 1, ua.VariantType.UInt32)]
            await c.write_values([c.get_node(m.instruction_node(slot, f)) for f, _, _ in vals]
                                 + [w], [ua.Variant(v, t) for _, v, t in vals]
                                 + [ua.Variant(written + 1, ua.VariantType.UInt32)])
            for _ in range(200):
                if await r.read_value() == written + 1:
                    break
                await asyncio.sleep(0.02)
            assert await r.read_value() == written + 1
            states = await c.get_node(m.chute_states).read_value()
            assert states[3] == 1 and states[5] == 0
            life = await c.get_node(m.life_plc).read_value()
            await asyncio.sleep(1.2)
            assert await c.get_node(m.life_plc).read_value() != life
    asyncio.run(run())
    with opcua_plc.lock:
        assert opcua_plc.instructions[-1] == 777


def test_modbus_register_map_by_hand(modbus_plc):
    from pymodbus.client import AsyncModbusTcpClient
    m = modbus_plc.regs

    async def run():
        c = AsyncModbusTcpClient("127.0.0.1", port=modbus_plc.port)
        assert await c.connect()
        try:
            ack = (await c.read_holding_registers(m.instruction_ack, count=1,
                                                  device_id=m.unit)).registers[0]
            toggle = (ack & 1) ^ 1
            words = [toggle, 2] + words64(0x0123456789AB) + [5, 0, 0, 1] + words64(99) + [1, 0, 0, 2]
            await c.write_registers(m.instruction_base, words, device_id=m.unit)
            for _ in range(200):
                ack = (await c.read_holding_registers(m.instruction_ack, count=1,
                                                      device_id=m.unit)).registers[0]
                if ack & 1 == toggle:
                    break
                await asyncio.sleep(0.01)
            assert ack & 1 == toggle
            # the machine sorts both; their reports arrive in the report mailbox, a batch at
            # a time: read it when the PLC's toggle differs from our ack, then mirror it
            reports = []
            for _ in range(300):
                block = (await c.read_holding_registers(
                    m.report_base, count=m.report_end - m.report_base, device_id=m.unit)).registers
                host_ack = (await c.read_holding_registers(m.report_ack, count=1,
                                                           device_id=m.unit)).registers[0]
                if block[0] & 1 != host_ack & 1:
                    reports += [(from_words(block[2 + 6 * k:6 + 6 * k]), block[6 + 6 * k],
                                 block[7 + 6 * k]) for k in range(block[1])]
                    await c.write_registers(m.report_ack, [block[0] & 1], device_id=m.unit)
                if len(reports) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert (0x0123456789AB, 5, 0) in reports and (99, 1, 0) in reports
            states = (await c.read_input_registers(m.chute_base, count=11,
                                                   device_id=m.unit)).registers
            assert states[3] == 1 and states[5] == 0
        finally:
            c.close()
    asyncio.run(run())
    with modbus_plc.lock:
        assert modbus_plc.instructions[-2:] == [0x0123456789AB, 99]


def test_model_files_errors_name_file_and_key(tmp_path):
    assert load_nodes().instruction_slots >= 1 and load_registers().instruction_slots == 8
    f = tmp_path / "nodes.toml"
    f.write_text(open(load_nodes().path).read().replace('slot = "ns=2;s=Sorter.Reports.{i}.{field}"',
                                                         'slot = "ns=2;s=Sorter.Reports"'))
    with pytest.raises(ModelError, match=r"nodes.toml: \[reports\] slot: the pattern needs"):
        load_nodes(f)
    g = tmp_path / "registers.toml"
    g.write_text(open(load_registers().path).read().replace("ack = 100", "ack = 10"))
    with pytest.raises(ModelError, match=r"registers.toml: holding registers of \[instructions\] "
                                         r"and \[instructions.ack\] overlap"):
        load_registers(g)
    g.write_text("unit = 1\n[instructions]\nbase = -1\n")
    with pytest.raises(ModelError, match=r"\[instructions\] base: must be >= 0"):
        load_registers(g)
