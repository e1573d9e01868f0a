"""Engine configuration: defaults, a TOML file, then command-line overrides, in that order.

Every setting has a default that runs on one machine over loopback, so `sorter run` with no
arguments works. docs/engine.md lists every key.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class EngineConfig:
    plan: str | None = None                       # None: the bundled plan
    scans: str = "tcp://127.0.0.1:5555"           # PULL: scanner drivers PUSH scan events here
    decisions: str = "tcp://127.0.0.1:5556"       # PUSH: the PLC side PULLs decisions here
    feedback: str = "tcp://127.0.0.1:5557"        # PULL: chute status, sort confirmations
    control: str = "tcp://127.0.0.1:5558"         # ROUTER: status, plan load, chutes, stop
    metrics: str = "127.0.0.1:9108"               # Prometheus HTTP endpoint; "" disables
    deadline_ms: float = 500.0                    # older scans are decided `late`; 0 disables
    batch_max: int = 8192                         # events routed per core call, at most
    poll_ms: int = 50                             # idle wake-up (timers: fsync, status)
    rcvhwm: int = 1_000                           # messages queued per input socket (the bound
                                                  # on what the engine accepts: docs/engine.md)
    sndhwm: int = 1000                            # decision messages queued for the PLC side:
                                                  # small, so a stalled gateway holds seconds, not minutes
    linger_ms: int = 1000                         # how long close() may flush decisions
    native_io: bool = True                        # accepted, no effect (one I/O path: pyzmq)
    max_frame: int = 16 * 1024 * 1024             # larger messages are malformed
    audit_dir: str = "audit"
    fsync_interval_s: float | None = 1.0          # 0: every batch; None: never (OS decides)
    rotate_mb: float = 256.0                      # accepted, no effect (the compactor makes the files)
    rotate_s: float = 3600.0                      # accepted, no effect
    log_level: str = "INFO"
    decision_version: int = 1                     # DECISION messages sent: 1, or 2 with decided_ns
                                                  # (docs/protocol.md 6.1; the PLC gateway uses it)
    log_file: str | None = None                   # engine log also appended here (not the audit dir)
    segment_mb: float = 64.0                      # audit journal segment size (preallocated)
    compact_s: float = 5.0                        # seal a journal segment for compaction after S s
    plan_dir: str | None = None                   # load_plan reads only below it (None: cwd)
    plan_max_mb: float = 256.0                    # load_plan refuses a larger plan file
    keys: str | None = None                       # `sorter keys init` dir: CURVE on control
    auth_feedback: bool = False                   # CURVE on feedback too (needs keys)
    insecure: bool = False                        # allow control on a non-loopback address
                                                  # without keys

    def with_overrides(self, **overrides) -> "EngineConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


SECTIONS = {
    "engine": {"plan", "deadline_ms", "batch_max", "poll_ms", "max_frame", "log_level",
               "log_file", "plan_dir", "plan_max_mb", "decision_version"},
    "endpoints": {"scans", "decisions", "feedback", "control", "metrics"},
    "zmq": {"rcvhwm", "sndhwm", "linger_ms", "native_io"},
    "audit": {"dir", "fsync_interval_s", "rotate_mb", "rotate_s", "segment_mb", "compact_s"},
    "security": {"keys", "auth_feedback", "insecure"},
}

# Paths in a config file are relative to the file, not to the directory the engine starts in.
_PATHS = ("plan", "audit_dir", "plan_dir", "keys", "log_file")


class ConfigError(ValueError):
    pass


def load_config(path: str | Path | None) -> EngineConfig:
    """Defaults, updated from a TOML file ([engine], [endpoints], [zmq], [audit])."""
    config = EngineConfig()
    if path is None:
        return config
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    types = {f.name: f.type for f in fields(EngineConfig)}
    values = {}
    for section, table in data.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}]: unknown section (known: {', '.join(SECTIONS)})")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{path}: [{section}] {key}: unknown key "
                                  f"(known: {', '.join(sorted(SECTIONS[section]))})")
            name = "audit_dir" if (section, key) == ("audit", "dir") else key
            if section == "audit" and key == "fsync_interval_s" and value < 0:
                value = None
            expected = types[name]
            if "float" in expected and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            ok = (value is None and "None" in expected) or (
                isinstance(value, bool) and expected == "bool") or any(
                isinstance(value, t) and not isinstance(value, bool)
                for t, n in ((int, "int"), (float, "float"), (str, "str")) if n in expected)
            if not ok:
                raise ConfigError(f"{path}: [{section}] {key}: expected {expected}, got {value!r}")
            if name == "decision_version" and value not in (1, 2):
                raise ConfigError(f"{path}: [{section}] {key}: expected 1 or 2, got {value!r}")
            values[name] = value
    for name in _PATHS:
        if isinstance(values.get(name), str) and not Path(values[name]).is_absolute():
            values[name] = str(path.parent / values[name])
    return replace(config, **values)
