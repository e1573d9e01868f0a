"""Start `sorter run` (or any program that logs a JSON `ready` line) as a child process and
wait for it to say where it listens.

The demo, the bench and the tests all start engines on wildcard loopback ports and read the
ports back from the `ready` log line; this is that one way of doing it. The child's stdout and
stderr go to a log file (JSON lines), which outlives it for whoever wants to read it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "tcp://127.0.0.1:*"
SOCKETS = ("scans", "decisions", "feedback", "control")


def engine_command(audit_dir, *extra: str, metrics: str = "127.0.0.1:0",
                   plan: str | None = None) -> list[str]:
    """`sorter run` with every socket on a wildcard loopback port, the audit under audit_dir
    and the Prometheus endpoint at `metrics` ('' disables; the default picks a free port);
    `extra` flags go last (they win)."""
    cmd = [sys.executable, "-m", "sorter.cli", "run", "--audit-dir", str(audit_dir),
           "--metrics", metrics]
    for name in SOCKETS:
        cmd += [f"--{name}", LOOPBACK]
    if plan:
        cmd += ["--plan", str(plan)]
    return cmd + list(extra)


class Child:
    """A child process whose stdout and stderr go to `log_path`. `new_session`: its own
    process group, so a Ctrl-C meant for the parent does not reach it (the parent stops it)."""

    def __init__(self, name: str, cmd: list[str], log_path, *, cwd=None,
                 env: dict | None = None, new_session: bool = False):
        self.name, self.cmd, self.log_path = name, cmd, Path(log_path)
        self._log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=self._log, cwd=cwd, env=env,
                                         start_new_session=new_session)
        except BaseException:
            self._log.close()
            raise
        self.ready: dict | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict]:
        """The JSON objects logged so far (other lines skipped)."""
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def tail(self, n: int = 20) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()[-n:]

    def wait_ready(self, timeout_s: float = 60.0) -> dict:
        """The `ready` log entry (with its `endpoints`); RuntimeError if the child exits or
        stays silent for timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in self.lines():
                if entry.get("event") == "ready":
                    self.ready = entry
                    return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"ready: {' | '.join(self.tail(5))} (log {self.log_path})")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no ready line within {timeout_s} s "
                           f"(log {self.log_path})")

    def wait(self, timeout_s: float = 30.0) -> int | None:
        """Its exit code; one that does not exit within timeout_s is killed and gets None
        (not stopping is a failure)."""
        try:
            self.exit_code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exit_code = None
        self._log.close()
        return self.exit_code

    def stop(self, sig: int | None = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Send `sig` (None: send nothing) if it still runs, then `wait`."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


def env_with_path(root) -> dict:
    """This environment with `root` first on PYTHONPATH (a checkout's top-level packages)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
