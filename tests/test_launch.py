"""`sorter.engine.launch`: how the demo, the bench and the tests start engines and learn their
endpoints; what happens when a child fails before it is ready or does not stop."""
from __future__ import annotations

import signal
import sys

import pytest

from sorter.engine.launch import Child, engine_command


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_is_found_among_other_output(tmp_path):
    child = Child("t", py("import json, time; print('hello'); "
                          "print(json.dumps({'event': 'ready', 'endpoints': {'x': 1}}), "
                          "flush=True); time.sleep(30)"), tmp_path / "t.log")
    try:
        assert child.wait_ready(20)["endpoints"] == {"x": 1}
        assert child.ready["event"] == "ready"
        assert [e["event"] for e in child.lines()] == ["ready"]      # non-JSON lines skipped
        assert child.tail(2)[0] == "hello"
    finally:
        assert child.stop(signal.SIGTERM, 10) == -signal.SIGTERM


def test_a_child_that_exits_before_ready_is_reported_with_its_log(tmp_path):
    child = Child("broken", py("import sys; print('no plan here', file=sys.stderr); "
                               "sys.exit(3)"), tmp_path / "b.log")
    with pytest.raises(RuntimeError, match=r"broken exited with 3 before ready: no plan here"):
        child.wait_ready(20)
    assert child.wait(5) == 3


def test_a_silent_child_times_out_and_one_that_ignores_sigterm_is_killed(tmp_path):
    child = Child("mute", py("import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"),
                  tmp_path / "m.log")
    with pytest.raises(RuntimeError, match="no ready line within 0.5 s"):
        child.wait_ready(0.5)
    assert child.stop(signal.SIGTERM, 0.5) is None              # did not stop: killed
    assert child.proc.returncode == -signal.SIGKILL


def test_engine_command_binds_every_socket_on_loopback_and_extra_flags_win(tmp_path):
    cmd = engine_command(tmp_path / "audit", "--metrics", "", plan="p.toml")
    assert cmd[1:4] == ["-m", "sorter.cli", "run"]
    for name in ("scans", "decisions", "feedback", "control"):
        assert cmd[cmd.index(f"--{name}") + 1] == "tcp://127.0.0.1:*"
    assert cmd[cmd.index("--plan") + 1] == "p.toml"
    assert cmd[-2:] == ["--metrics", ""]                         # argparse: the last one wins
