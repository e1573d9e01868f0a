"""The Modbus TCP gateway: a client of the PLC's Modbus server, through `pymodbus`.

Instructions go through a holding-register mailbox with a toggle-bit handshake (docs/plc.md
"Modbus TCP"): when the PLC's ack register mirrors the host's toggle, the mailbox is free; the
host writes control (toggle flipped), count and up to `slots` instructions in one Write
Multiple Registers request; the PLC copies them and writes the toggle back to its ack
register. Sort reports come the other way through a mailbox the PLC writes and the host
acknowledges the same way; chute states are input registers, one per chute; both sides count
a life register up. Modbus has no subscriptions: the host polls, every `poll_ms` while there
is traffic.

Register words of a number wider than 16 bits are big-endian, high word first.
"""
from __future__ import annotations

import asyncio
import logging
import time

from .log import log_event
from .models import RegisterMap
from .polled import LinkDown, PolledGateway

log = logging.getLogger("plc.modbus")

__all__ = ["ModbusGateway", "require_pymodbus", "words64", "from_words"]

MAX_READ = 125


def require_pymodbus():
    """pymodbus, or SystemExit with a one-line message saying how to get it."""
    try:
        import pymodbus  # noqa: F401
        from pymodbus.client import AsyncModbusTcpClient  # noqa: F401 - the client we need
    except ImportError:
        raise SystemExit("sorter plc --protocol modbus needs the pymodbus package: "
                         "pip install 'sorter[plc]' (or pip install 'pymodbus>=3.16')") from None
    return pymodbus


def words64(v: int) -> list[int]:
    """A u64 as 4 registers, high word first."""
    return [(v >> 48) & 0xFFFF, (v >> 32) & 0xFFFF, (v >> 16) & 0xFFFF, v & 0xFFFF]


def from_words(ws) -> int:
    out = 0
    for w in ws:
        out = (out << 16) | (w & 0xFFFF)
    return out


class ModbusGateway(PolledGateway):
    """Engine decisions -> the PLC's instruction mailbox; its reports and chute states ->
    engine feedback."""

    protocol = "modbus"
    thread_name = "plc-modbus-gateway"

    def __init__(self, host: str, port: int, decisions: str, feedback: str, regs: RegisterMap, *,
                 max_age_s: float | None = 0.5, chute_poll_s: float = 0.1,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0,
                 timeout_s: float = 2.0, context=None):
        require_pymodbus()
        super().__init__(decisions, feedback, max_age_s=max_age_s,
                         backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s,
                         timeout_s=timeout_s, context=context,
                         counters={"connections": 0, "link_downs": 0, "life_timeouts": 0,
                                   "instructions_written": 0, "mailbox_writes": 0,
                                   "reports": 0, "chute_states": 0, "malformed": 0,
                                   "modbus_errors": 0})
        self.host, self.port = host, port
        self.regs = regs
        self.chute_poll_s = chute_poll_s

    def peer(self) -> dict:
        return {"peer": f"{self.host}:{self.port}"}

    async def _main(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient
        backoff = self.backoff_initial_s
        try:
            while not self._stop.is_set():
                client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s,
                                              retries=0, reconnect_delay=0)
                try:
                    ok = await client.connect()
                except Exception:  # noqa: BLE001 - treated as a failed attempt
                    ok = False
                if not ok:
                    client.close()
                    self._drain(time.monotonic())
                    log_event(log, logging.WARNING, "cannot connect to the PLC",
                              peer=f"{self.host}:{self.port}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = self.backoff_initial_s
                try:
                    await self._session(client)
                except Exception as e:  # noqa: BLE001 - link down: count, log, reconnect
                    self.counters["link_downs"] += 1
                    log_event(log, logging.WARNING, "link down", peer=f"{self.host}:{self.port}",
                              reason="life_timeout" if isinstance(e, LinkDown) else repr(e))
                finally:
                    self.link_up = False
                    self.connected.clear()
                    client.close()
        except BaseException as e:  # noqa: BLE001
            self.error = e
            raise
        finally:
            self.engine.close()

    async def _read(self, client, address: int, count: int, input_regs: bool = False) -> list[int]:
        out: list[int] = []
        for a in range(address, address + count, MAX_READ):
            n = min(MAX_READ, address + count - a)
            fn = client.read_input_registers if input_regs else client.read_holding_registers
            r = await fn(a, count=n, device_id=self.regs.unit)
            if r.isError():
                self.counters["modbus_errors"] += 1
                raise ConnectionError(f"Modbus error reading {a}..{a + n - 1}: {r}")
            out += r.registers
        return out

    async def _write(self, client, address: int, values: list[int]) -> None:
        r = await client.write_registers(address, values, device_id=self.regs.unit)
        if r.isError():
            self.counters["modbus_errors"] += 1
            raise ConnectionError(f"Modbus error writing {address}..: {r}")

    async def _session(self, client) -> None:
        m = self.regs
        # one read per cycle covers the PLC's ack, its report mailbox and its life counter
        lo = min(m.instruction_ack, m.report_base, m.life_plc)
        hi = max(m.instruction_ack + 1, m.report_end, m.life_plc + 1)
        span = await self._read(client, lo, hi - lo)
        toggle = span[m.instruction_ack - lo] & 1         # the mailbox is free: ack == toggle
        instr_control = (await self._read(client, m.instruction_base, 1))[0]
        if (instr_control & 1) != toggle:
            toggle = instr_control & 1                    # a batch the PLC has not taken yet
        report_ack = (await self._read(client, m.report_ack, 1))[0] & 1
        self.counters["connections"] += 1
        self.link_up = True
        self.connected.set()
        log_event(log, logging.INFO, "PLC connected", peer=f"{self.host}:{self.port}")
        last_states: list[int] | None = None
        now = time.monotonic()
        next_chutes = now
        next_life, host_life = now, 0
        plc_life, life_seen = span[m.life_plc - lo], now
        seq = 0
        last_busy = now
        while not self._stop.is_set():
            now = time.monotonic()
            self._drain(now)
            span = await self._read(client, lo, hi - lo)
            busy = False
            # instructions: the mailbox is free when the PLC's ack mirrors our toggle
            if (span[m.instruction_ack - lo] & 1) == toggle and self.backlog:
                with self._lock:
                    batch = self.backlog.take(m.instruction_slots, now)
                if batch:
                    toggle ^= 1
                    words = [toggle, len(batch)]
                    for ins in batch:
                        seq = (seq + 1) & 0xFFFF
                        words += words64(ins.tracking_id) + [ins.chute, ins.alt_chute,
                                                             ins.reason, seq]
                    await self._write(client, m.instruction_base, words)
                    self.counters["instructions_written"] += len(batch)
                    self.counters["mailbox_writes"] += 1
                    busy = True
            # reports: a new batch when the PLC's toggle differs from our ack
            rb = m.report_base - lo
            if (span[rb] & 1) != report_ack:
                count = span[rb + 1]
                if not 0 <= count <= m.report_slots:
                    self.counters["malformed"] += 1
                    log_event(log, logging.ERROR, "report count out of range", count=count,
                              register=m.report_base + 1, slots=m.report_slots)
                    count = 0
                confirms = []
                for k in range(count):
                    w = span[rb + 2 + k * m.REPORT_SLOT: rb + 2 + (k + 1) * m.REPORT_SLOT]
                    confirms.append((from_words(w[:4]), w[4], w[5]))
                good = [c for c in confirms if c[2] < 3]
                if len(good) != len(confirms):
                    self.counters["malformed"] += len(confirms) - len(good)
                    log_event(log, logging.ERROR, "report outcome out of range",
                              bad=len(confirms) - len(good))
                if good:
                    self.engine.send_confirms(good)
                self.counters["reports"] += len(good)
                report_ack = span[rb] & 1
                await self._write(client, m.report_ack, [report_ack])
                busy = True
            # life both ways
            pl = span[m.life_plc - lo]
            if pl != plc_life:
                plc_life, life_seen = pl, now
            elif now - life_seen > m.life_timeout_s:
                self.counters["life_timeouts"] += 1
                raise LinkDown()
            if now >= next_life:
                next_life = now + m.life_interval_s
                host_life = (host_life + 1) & 0xFFFF
                await self._write(client, m.life_host, [host_life])
            # chute states: input registers, polled
            if now >= next_chutes:
                next_chutes = now + self.chute_poll_s
                st = await self._read(client, m.chute_base, m.max_chute + 1, input_regs=True)
                changed = [(c, s) for c, s in enumerate(st) if c > 0 and s < 3 and (
                    last_states is None or last_states[c] != s)]
                if changed:
                    self.engine.send_chute_states(changed)
                    self.counters["chute_states"] += len(changed)
                last_states = st
            if busy or self.backlog:
                last_busy = now
            else:            # quiet: poll at poll_ms for a moment, then ten times slower
                await asyncio.sleep(m.poll_s if now - last_busy < 0.2 else 10 * m.poll_s)
