"""Engine settings: defaults < config file < flags; mistakes named with file, section and key."""
import pytest

from sorter.engine.config import ConfigError, EngineConfig, load_config


def test_defaults_run_on_loopback():
    c = load_config(None)
    assert c == EngineConfig()
    assert all(getattr(c, k).startswith("tcp://127.0.0.1:") for k in ("scans", "decisions", "feedback", "control"))


def test_file_then_overrides(tmp_path):
    f = tmp_path / "engine.toml"
    f.write_text('[engine]\nplan = "hub.toml"\ndeadline_ms = 300\n[endpoints]\nscans = "ipc:///tmp/s"\n'
                 '[audit]\ndir = "/var/audit"\nfsync_interval_s = -1\n[zmq]\nsndhwm = 10\n')
    c = load_config(f)
    assert (c.plan, c.deadline_ms, c.scans, c.audit_dir, c.fsync_interval_s, c.sndhwm) == \
        (str(tmp_path / "hub.toml"), 300.0, "ipc:///tmp/s", "/var/audit", None, 10)
    c = c.with_overrides(deadline_ms=0.0, scans=None)
    assert (c.deadline_ms, c.scans) == (0.0, "ipc:///tmp/s")


@pytest.mark.parametrize("text, words", [
    ("[engin]\n", ["[engin]", "unknown section"]),
    ("[engine]\ndeadline = 3\n", ["[engine] deadline", "unknown key"]),
    ("[zmq]\nsndhwm = \"many\"\n", ["[zmq] sndhwm", "expected"]),
    ("[engine\n", ["engine.toml"]),
])
def test_mistakes_are_named(tmp_path, text, words):
    f = tmp_path / "engine.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert all(w in str(e.value) for w in words)
    assert str(f) in str(e.value)


def test_paths_in_a_config_file_are_relative_to_the_file(tmp_path):
    """`plan`, `[audit] dir`, `plan_dir` and `[security] keys` all resolve next to the file, so
    an engine started from / does not create /audit."""
    f = tmp_path / "etc" / "engine.toml"
    f.parent.mkdir()
    f.write_text('[engine]\nplan = "hub.toml"\nplan_dir = "plans"\nplan_max_mb = 8\n'
                 '[audit]\ndir = "audit"\n[security]\nkeys = "keys"\ninsecure = true\n')
    c = load_config(f)
    assert c.plan == str(f.parent / "hub.toml")
    assert c.audit_dir == str(f.parent / "audit")
    assert c.plan_dir == str(f.parent / "plans")
    assert c.keys == str(f.parent / "keys")
    assert (c.plan_max_mb, c.insecure, c.auth_feedback) == (8.0, True, False)
    assert load_config(None).audit_dir == "audit"            # no file: the working directory


def test_an_engine_started_elsewhere_audits_next_to_its_config(tmp_path):
    import subprocess
    import sys
    f = tmp_path / "engine.toml"
    f.write_text('[audit]\ndir = "audit"\n[endpoints]\nmetrics = ""\n' + "".join(
        f'{name} = "tcp://127.0.0.1:*"\n' for name in ("scans", "decisions", "feedback",
                                                        "control")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sorter.cli", "run", "--config", str(f)],
                            cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:
            if b'"ready"' in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "audit").is_dir() and not (elsewhere / "audit").exists()
