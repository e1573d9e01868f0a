"""A simulated PLC with an OPC UA server (`asyncua.Server`), the sorter loop behind.

It builds the node model (`plc.models.NodeModel`, the bundled default unless given) and plays
the PLC's side of its handshakes (docs/plc.md "OPC UA"): takes every instruction slot up to the
host's write index and sets its read index; writes sort reports into the report ring and bumps
its write index while the host has room; keeps the chute-state array up to date; counts its
life variable up. Runs an asyncio loop in a thread; `start()` returns once the server listens.

    sim = OpcUaPlc(plan).start()        # sim.url: opc.tcp://127.0.0.1:PORT/sorter
    ...; sim.snapshot(); sim.stop()
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from plc.models import INSTRUCTION_FIELDS, REPORT_FIELDS, NodeModel, load_nodes
from sorter.plan import Plan

from .plc_machine import ServedPlc

__all__ = ["OpcUaPlc"]

MASK32 = 0xFFFFFFFF


class OpcUaPlc(ServedPlc):
    thread_name = "plc-opcua-sim"
    title = "OPC UA PLC simulator"
    start_timeout_s = 30.0
    join_timeout_s = 15.0

    def __init__(self, plan: Plan | None = None, *, model: NodeModel | None = None,
                 port: int = 0, echo: bool = False, seed: int = 0, cycle_s: float = 0.001,
                 registry=None, loopback=None, **loop_kw: Any):
        super().__init__(plan, port=port, echo=echo, seed=seed, cycle_s=cycle_s,
                         registry=registry, loopback=loopback, **loop_kw)
        self.model = model or load_nodes()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/sorter"
        self.counters = {"instructions": 0, "reports": 0, "chute_changes": 0, "duplicates": 0}

    async def _main(self) -> None:
        from asyncua import Server, ua
        m = self.model
        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        await server.register_namespace(m.namespace)
        objects = server.nodes.objects
        V = ua.VariantType
        ids: dict[str, ua.NodeId] = {}

        async def var(nodeid: str, value, vtype, writable: bool):
            nid = ua.NodeId.from_string(nodeid)
            name = nodeid.split("s=", 1)[-1]
            n = await objects.add_variable(nid, ua.QualifiedName(name, nid.NamespaceIndex),
                                           ua.Variant(value, vtype))
            if writable:
                await n.set_writable()
            ids[nodeid] = nid
            return nid

        itypes = (V.UInt64, V.UInt16, V.UInt16, V.Byte, V.UInt32)
        rtypes = (V.UInt64, V.UInt16, V.Byte)
        islots = [[await var(m.instruction_node(i, f), 0, t, True)
                   for f, t in zip(INSTRUCTION_FIELDS, itypes)] for i in range(m.instruction_slots)]
        rslots = [[await var(m.report_node(i, f), 0, t, False)
                   for f, t in zip(REPORT_FIELDS, rtypes)] for i in range(m.report_slots)]
        w_index = await var(m.instruction_write_index, 0, V.UInt32, True)
        r_index = await var(m.instruction_read_index, 0, V.UInt32, False)
        rw_index = await var(m.report_write_index, 0, V.UInt32, False)
        rr_index = await var(m.report_read_index, 0, V.UInt32, True)
        states = [0] * (m.max_chute + 1)
        for c, s in self.machine.chute_states():
            if c <= m.max_chute:
                states[c] = s
        states_id = await var(m.chute_states, states, V.Byte, False)
        await var(m.life_host, 0, V.UInt32, True)
        life_id = await var(m.life_plc, 0, V.UInt32, False)

        aspace = server.iserver.aspace

        def read(nid):
            return aspace.read_attribute_value(nid, ua.AttributeIds.Value).Value.Value

        async def write(nid, value, vtype):
            await server.write_attribute_value(nid, ua.DataValue(ua.Variant(value, vtype)))

        async with server:
            self._ready.set()
            taken, reports_written, life = 0, 0, 0
            pending: list[tuple[int, int, int]] = []
            next_life = time.monotonic()
            while not self._stop_evt.is_set():
                try:
                    await asyncio.wait_for(self._stop_evt.wait(), self.cycle_s)
                except asyncio.TimeoutError:
                    pass
                if self.silent:
                    continue
                now = time.monotonic()
                written = int(read(w_index))
                with self.lock:
                    n = (written - taken) & MASK32
                    if 0 < n <= m.instruction_slots:
                        for j in range(n):
                            slot = islots[(taken + j) % m.instruction_slots]
                            pid, chute, _alt, reason, _seq = (int(read(x)) for x in slot)
                            self.instructions.append(pid)
                            self.machine.instruct(pid, chute, reason, now)
                        self.counters["instructions"] += n
                        taken = written
                    confirms, changes = self.machine.poll(now)
                    pending += confirms
                    self.counters["chute_changes"] += len(changes)
                if n:
                    await write(r_index, taken, V.UInt32)
                if changes:
                    for c, s in changes:
                        if c <= m.max_chute:
                            states[c] = s
                    await write(states_id, list(states), V.Byte)
                host_read = int(read(rr_index))
                room = m.report_slots - ((reports_written - host_read) & MASK32)
                if pending and room > 0:
                    batch, pending = pending[:room], pending[room:]
                    for pid, chute, outcome in batch:
                        slot = rslots[reports_written % m.report_slots]
                        for nid, val, t in zip(slot, (pid, chute, outcome), rtypes):
                            await write(nid, val, t)
                        reports_written = (reports_written + 1) & MASK32
                    await write(rw_index, reports_written, V.UInt32)
                    with self.lock:
                        self.counters["reports"] += len(batch)
                if now >= next_life:
                    next_life = now + m.life_interval_s
                    life = (life + 1) & MASK32
                    await write(life_id, life, V.UInt32)
