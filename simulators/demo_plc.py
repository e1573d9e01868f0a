"""`sorter demo --plc tcp|opcua|modbus`: the simulated PLC speaking a real protocol, and the PLC
gateway (`plc/`) between it and the engine, in place of the ZeroMQ PLC simulator.

    engine --DECISION--> gateway --telegrams / OPC UA / Modbus--> simulated PLC (sorter loop)
    engine <--CHUTE_STATUS, SORT_CONFIRM-- gateway <--reports, chute states-- simulated PLC
"""
from __future__ import annotations

from typing import Any

from sorter.plan import Plan

PROTOCOLS = ("tcp", "opcua", "modbus")


class ProtocolPlc:
    """A simulated protocol PLC plus the gateway, started and stopped together; `snapshot()`
    is the sorter loop's (as `PlcSimulator.snapshot()`) with the gateway's under "gateway"."""

    def __init__(self, protocol: str, plan: Plan, decisions: str, feedback: str, *,
                 registry=None, loopback=None, seed: int = 0, preset: str = "s7_binary",
                 max_age_s: float | None = 0.5, **loop_kw: Any):
        if protocol not in PROTOCOLS:
            raise ValueError(f"--plc must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        kw = dict(registry=registry, loopback=loopback, seed=seed, **loop_kw)
        if protocol == "tcp":
            from plc.tcp import TcpGateway
            from plc.telegrams import load_preset
            from .plc_tcp import TcpTelegramPlc
            self.sim = TcpTelegramPlc(load_preset(preset), plan, **kw)
            self._gateway = lambda: TcpGateway(self.sim.preset, decisions, feedback,
                                               connect=self.sim.address, max_age_s=max_age_s)
        elif protocol == "opcua":
            from plc.opcua import OpcUaGateway
            from .plc_opcua import OpcUaPlc
            self.sim = OpcUaPlc(plan, **kw)
            self._gateway = lambda: OpcUaGateway(self.sim.url, decisions, feedback,
                                                 self.sim.model, max_age_s=max_age_s)
        else:
            from plc.modbus import ModbusGateway
            from .plc_modbus import ModbusPlc
            self.sim = ModbusPlc(plan, **kw)
            self._gateway = lambda: ModbusGateway("127.0.0.1", self.sim.port, decisions, feedback,
                                                  self.sim.regs, max_age_s=max_age_s)
        self.protocol = protocol
        self.gateway = None

    def start(self, timeout_s: float = 30.0) -> "ProtocolPlc":
        self.sim.start()
        self.gateway = self._gateway().start()
        if not self.gateway.connected.wait(timeout_s):
            raise RuntimeError(f"the {self.protocol} gateway did not reach the simulated PLC")
        return self

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.sim.stop()

    def snapshot(self) -> dict:
        with self.sim.lock:
            snap = self.sim.machine.snapshot()
        snap["gateway"] = self.gateway.snapshot() if self.gateway is not None else {}
        return snap
