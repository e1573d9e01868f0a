"""The OPC UA node model and the Modbus register map, loaded from TOML (bundled defaults in
plc/data/, documented in docs/plc.md). Errors name the file and the key."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_DIR", "ModelError", "NodeModel", "RegisterMap", "load_nodes", "load_registers",
           "INSTRUCTION_FIELDS", "REPORT_FIELDS"]

DATA_DIR = Path(__file__).resolve().parent / "data"
INSTRUCTION_FIELDS = ("TrackingId", "Chute", "AltChute", "Reason", "Seq")
REPORT_FIELDS = ("TrackingId", "Chute", "Outcome")


class ModelError(ValueError):
    """A node model or register map that cannot be used, with the file and the key at fault."""


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ModelError(f"{path}: {e}") from None


def _take(data: dict, section: str | None, key: str, kind, path: Path, default=None):
    table = data if section is None else data.get(section)
    where = f"{path}: " + (f"[{section}] " if section else "") + key
    if not isinstance(table, dict):
        raise ModelError(f"{path}: missing table [{section}]")
    if key not in table:
        if default is not None:
            return default
        raise ModelError(f"{where}: missing")
    v = table[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ModelError(f"{where}: expected {kind.__name__}, got {v!r}")
    if kind is int and v < 0:
        raise ModelError(f"{where}: must be >= 0, got {v}")
    return v


@dataclass(frozen=True)
class NodeModel:
    namespace: str
    instruction_slots: int
    instruction_slot: str          # pattern with {i} and {field}
    instruction_write_index: str
    instruction_read_index: str
    report_slots: int
    report_slot: str
    report_write_index: str
    report_read_index: str
    chute_states: str
    max_chute: int
    life_host: str
    life_plc: str
    life_interval_s: float
    life_timeout_s: float
    path: str

    def instruction_node(self, i: int, field: str) -> str:
        return self.instruction_slot.format(i=i, field=field)

    def report_node(self, i: int, field: str) -> str:
        return self.report_slot.format(i=i, field=field)


def load_nodes(path: str | Path | None = None) -> NodeModel:
    """The node model in `path` (None: the bundled plc/data/nodes.toml)."""
    p = Path(path) if path is not None else DATA_DIR / "nodes.toml"
    d = _read(p)
    m = NodeModel(
        namespace=_take(d, None, "namespace", str, p),
        instruction_slots=_take(d, "instructions", "slots", int, p),
        instruction_slot=_take(d, "instructions", "slot", str, p),
        instruction_write_index=_take(d, "instructions", "write_index", str, p),
        instruction_read_index=_take(d, "instructions", "read_index", str, p),
        report_slots=_take(d, "reports", "slots", int, p),
        report_slot=_take(d, "reports", "slot", str, p),
        report_write_index=_take(d, "reports", "write_index", str, p),
        report_read_index=_take(d, "reports", "read_index", str, p),
        chute_states=_take(d, "chutes", "states", str, p),
        max_chute=_take(d, "chutes", "max_chute", int, p),
        life_host=_take(d, "life", "host", str, p),
        life_plc=_take(d, "life", "plc", str, p),
        life_interval_s=_take(d, "life", "interval_ms", int, p, 1000) / 1000,
        life_timeout_s=_take(d, "life", "timeout_ms", int, p, 3000) / 1000,
        path=str(p))
    for sec, n in (("instructions", m.instruction_slots), ("reports", m.report_slots)):
        if not 1 <= n <= 1024:
            raise ModelError(f"{p}: [{sec}] slots: must be within 1..1024, got {n}")
    for sec, pat in (("instructions", m.instruction_slot), ("reports", m.report_slot)):
        if "{i}" not in pat or "{field}" not in pat:
            raise ModelError(f"{p}: [{sec}] slot: the pattern needs {{i}} and {{field}}: {pat!r}")
    return m


@dataclass(frozen=True)
class RegisterMap:
    unit: int
    instruction_base: int
    instruction_slots: int
    instruction_ack: int
    report_base: int
    report_slots: int
    report_ack: int
    chute_base: int
    max_chute: int
    life_host: int
    life_plc: int
    life_interval_s: float
    life_timeout_s: float
    poll_s: float
    path: str

    INSTRUCTION_SLOT = 8           # registers per instruction slot
    REPORT_SLOT = 6                # registers per report slot

    @property
    def instruction_end(self) -> int:
        return self.instruction_base + 2 + self.instruction_slots * self.INSTRUCTION_SLOT

    @property
    def report_end(self) -> int:
        return self.report_base + 2 + self.report_slots * self.REPORT_SLOT


def load_registers(path: str | Path | None = None) -> RegisterMap:
    """The register map in `path` (None: the bundled plc/data/registers.toml)."""
    p = Path(path) if path is not None else DATA_DIR / "registers.toml"
    d = _read(p)
    m = RegisterMap(
        unit=_take(d, None, "unit", int, p, 1),
        instruction_base=_take(d, "instructions", "base", int, p),
        instruction_slots=_take(d, "instructions", "slots", int, p),
        instruction_ack=_take(d, "instructions", "ack", int, p),
        report_base=_take(d, "reports", "base", int, p),
        report_slots=_take(d, "reports", "slots", int, p),
        report_ack=_take(d, "reports", "ack", int, p),
        chute_base=_take(d, "chutes", "base", int, p),
        max_chute=_take(d, "chutes", "max_chute", int, p),
        life_host=_take(d, "life", "host", int, p),
        life_plc=_take(d, "life", "plc", int, p),
        life_interval_s=_take(d, "life", "interval_ms", int, p, 1000) / 1000,
        life_timeout_s=_take(d, "life", "timeout_ms", int, p, 3000) / 1000,
        poll_s=_take(d, "life", "poll_ms", int, p, 2) / 1000,
        path=str(p))
    if not 1 <= m.instruction_slots <= 15 or not 1 <= m.report_slots <= 20:
        raise ModelError(f"{p}: slots: instructions 1..15, reports 1..20 (one Modbus write or "
                         "read carries at most 123 registers)")
    blocks = {"instructions": (m.instruction_base, m.instruction_end),
              "instructions.ack": (m.instruction_ack, m.instruction_ack + 1),
              "reports": (m.report_base, m.report_end),
              "reports.ack": (m.report_ack, m.report_ack + 1),
              "life.host": (m.life_host, m.life_host + 1), "life.plc": (m.life_plc, m.life_plc + 1)}
    names = sorted(blocks, key=lambda k: blocks[k])
    for a, b in zip(names, names[1:]):
        if blocks[a][1] > blocks[b][0]:
            raise ModelError(f"{p}: holding registers of [{a}] and [{b}] overlap")
    if max(e for _, e in blocks.values()) > 65536 or m.chute_base + m.max_chute + 1 > 65536:
        raise ModelError(f"{p}: registers beyond address 65535")
    return m
