"""A simulated PLC with a Modbus TCP server (`pymodbus`), the sorter loop behind.

It serves the register map (`plc.models.RegisterMap`, the bundled default unless given) and
plays the PLC's side of its handshakes (docs/plc.md "Modbus TCP"): when the host's instruction
toggle differs from its ack register it copies the batch to the machine and mirrors the
toggle; it writes sort reports into the report mailbox when the host has mirrored the previous
toggle; it keeps one input register per chute with the chute's state; it counts its life
register up. An asyncio loop in a thread; `start()` returns once the server listens.

    sim = ModbusPlc(plan).start()        # sim.port on 127.0.0.1
    ...; sim.snapshot(); sim.stop()
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from plc.models import RegisterMap, load_registers
from plc.modbus import from_words, words64
from sorter.plan import Plan

from .plc_machine import ServedPlc

__all__ = ["ModbusPlc"]

FC_HOLDING, FC_INPUT, FC_WRITE = 3, 4, 16


class ModbusPlc(ServedPlc):
    thread_name = "plc-modbus-sim"
    title = "Modbus PLC simulator"
    start_timeout_s = 20.0
    join_timeout_s = 10.0

    def __init__(self, plan: Plan | None = None, *, regs: RegisterMap | None = None,
                 port: int = 0, echo: bool = False, seed: int = 0, cycle_s: float = 0.001,
                 registry=None, loopback=None, **loop_kw: Any):
        super().__init__(plan, port=port, echo=echo, seed=seed, cycle_s=cycle_s,
                         registry=registry, loopback=loopback, **loop_kw)
        self.regs = regs or load_registers()
        self.counters = {"instructions": 0, "batches": 0, "reports": 0, "chute_changes": 0}

    async def _main(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        m = self.regs
        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        n_hr = max(m.instruction_end, m.report_end, m.instruction_ack + 1, m.report_ack + 1,
                   m.life_host + 1, m.life_plc + 1)
        states = [0] * (m.max_chute + 1)
        for c, s in self.machine.chute_states():
            if c <= m.max_chute:
                states[c] = s
        device = SimDevice(id=m.unit, simdata=(
            [SimData(0, values=False, datatype=DataType.BITS)],
            [SimData(0, values=False, datatype=DataType.BITS)],
            [SimData(0, values=[0] * n_hr, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0] * m.chute_base + states, datatype=DataType.REGISTERS)]))
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)

        async def get(address: int, count: int = 1) -> list[int]:
            return await server.async_getValues(m.unit, FC_HOLDING, address, count)

        async def put(address: int, values: list[int], fc: int = FC_WRITE) -> None:
            await server.async_setValues(m.unit, fc, address, values)

        self._ready.set()
        try:
            pending: list[tuple[int, int, int]] = []
            report_toggle, life = 0, 0
            next_life = time.monotonic()
            while not self._stop_evt.is_set():
                try:
                    await asyncio.wait_for(self._stop_evt.wait(), self.cycle_s)
                except asyncio.TimeoutError:
                    pass
                if self.silent:
                    continue
                now = time.monotonic()
                block = await get(m.instruction_base, m.instruction_end - m.instruction_base)
                ack = (await get(m.instruction_ack))[0]
                with self.lock:
                    if (block[0] & 1) != (ack & 1):
                        count = min(block[1], m.instruction_slots)
                        for k in range(count):
                            w = block[2 + 8 * k: 2 + 8 * (k + 1)]
                            pid = from_words(w[:4])
                            self.instructions.append(pid)
                            self.machine.instruct(pid, w[4], w[6], now)
                        self.counters["instructions"] += count
                        self.counters["batches"] += 1
                        new_ack = block[0] & 1
                    else:
                        new_ack = None
                    confirms, changes = self.machine.poll(now)
                    pending += confirms
                    self.counters["chute_changes"] += len(changes)
                if new_ack is not None:
                    await put(m.instruction_ack, [new_ack])
                for c, s in changes:
                    if c <= m.max_chute:
                        await put(m.chute_base + c, [s], FC_INPUT)
                host_ack = (await get(m.report_ack))[0] & 1
                if pending and host_ack == report_toggle:
                    batch, pending = pending[:m.report_slots], pending[m.report_slots:]
                    words = []
                    for pid, chute, outcome in batch:
                        words += words64(pid) + [chute, outcome]
                    report_toggle ^= 1
                    await put(m.report_base + 1, [len(batch)] + words)
                    await put(m.report_base, [report_toggle])     # the toggle last
                    with self.lock:
                        self.counters["reports"] += len(batch)
                if now >= next_life:
                    next_life = now + m.life_interval_s
                    life = (life + 1) & 0xFFFF
                    await put(m.life_plc, [life])
        finally:
            await server.shutdown()
