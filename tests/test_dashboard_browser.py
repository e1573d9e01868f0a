"""The chute wall in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by .ci/run) driven by Selenium, against a real engine, the
simulators and the dashboard on 127.0.0.1.

`SORTER_SCREENSHOT=docs/img/chute-wall.png python -m pytest tests/test_dashboard_browser.py -k
demo` also writes the README's screenshot there (docs/dashboard.md).
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from sorter import wire
from sorter.audit import read_audit
from sorter.engine.control_client import request
from sorter.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent


def chromium():
    """Headless Chromium from the system's packages (never a downloaded build)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        message = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1100", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def browser():
    b = chromium()
    try:
        yield b
    finally:
        b.quit()


class Command:
    """A `sorter ...` child whose stdout lines are read by a thread (never a full pipe)."""

    def __init__(self, args: list[str], cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "sorter.cli", *args], cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r}: {''.join(self.seen)}")

    def stop(self, sig=signal.SIGINT, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def wait(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout_s} s")


def tile(browser, chute: int) -> dict:
    return browser.execute_script(
        "const t = document.querySelector(`.tile[data-chute='${arguments[0]}']`);"
        "return t && {state: t.dataset.state, text: t.innerText, cls: t.className,"
        " fill: t.querySelector('.bar').hidden ? null : t.querySelector('.bar span').style.width};",
        chute)


def push_chute_status(endpoint: str, chutes, states) -> None:
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.connect(endpoint)
        s.send(wire.encode_chute_status(chutes, states))
        s.close()
    finally:
        ctx.term()


def test_demo_chute_wall_live_in_chromium(tmp_path, browser):
    plan = load_plan()
    demo = Command(["demo", "--seconds", "300", "--rate", "60", "--no-live",
                    "--dashboard", "127.0.0.1:0", "--audit-dir", str(tmp_path / "audit")],
                   tmp_path)
    try:
        control = demo.wait_for(r"control (tcp://127\.0\.0\.1:\d+)").group(1)
        url = demo.wait_for(r"chute wall: (http://127\.0\.0\.1:\d+/)").group(1)
        browser.get(url)
        # every chute of the plan, in plan order
        wait(lambda: browser.execute_script(
            "return document.querySelectorAll('.tile').length") == len(plan.chutes),
            what="the wall has every chute")
        order = browser.execute_script(
            "return [...document.querySelectorAll('.tile')].map(t => +t.dataset.chute)")
        assert order == list(plan.chutes)
        assert "ALMATY_CITY" in tile(browser, 5)["text"]
        assert "spare" in tile(browser, 67)["text"]

        # live numbers move
        def events():
            text = browser.find_element("id", "events").text
            return int(text) if text.isdigit() else 0
        first = wait(events, what="decisions shown")
        wait(lambda: events() > first + 50, what="the decision count moves")
        assert float(browser.find_element("id", "decisions_per_s").text) > 0
        assert browser.find_element("id", "read_rate").text.endswith("%")
        assert browser.find_element("id", "p99_ms").text.endswith("ms")
        assert "2026.11.1" in browser.find_element("id", "plan").text
        # tiles count parcels, fill bars come from the simulated PLC
        wait(lambda: any(int(re.search(r"(\d+) parcels", tile(browser, c)["text"])[1])
                         for c in (5, 6)), what="parcels counted on a tile")
        assert tile(browser, 5)["fill"] is not None
        alarms = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('.alarm')]"
            ".map(a => [a.dataset.alarm, a.dataset.active]))")
        assert alarms == {"engine_unreachable": "false", "audit_unavailable": "false",
                          "plc_link_down": "false", "scanner_silent": "false",
                          "decisions_undelivered": "false"}

        # a chute set full over the feedback socket shows within 2 s, in colour and text
        feedback = request(control, {"cmd": "status"}, timeout_s=10)["endpoints"]["feedback"]
        assert tile(browser, 67)["state"] == "available"
        started = time.monotonic()
        push_chute_status(feedback, [67], ["full"])
        wait(lambda: tile(browser, 67)["state"] == "full", timeout_s=2.0,
             what="tile 67 shows full")
        shown_after_s = time.monotonic() - started
        t67 = tile(browser, 67)
        assert "FULL" in t67["text"] and "full" in t67["cls"].split()
        colour = browser.execute_script(
            "return getComputedStyle(document.querySelector(\".tile[data-chute='67']\"))"
            ".borderLeftColor")
        assert colour != browser.execute_script(
            "return getComputedStyle(document.querySelector(\".tile[data-chute='5']\"))"
            ".borderLeftColor")
        push_chute_status(feedback, [12], ["disabled"])
        wait(lambda: tile(browser, 12)["state"] == "disabled", what="tile 12 disabled")
        assert "DISABLED" in tile(browser, 12)["text"]

        # read-only by default: the page offers no chute control, the API refuses it
        browser.find_element("css selector", ".tile[data-chute='12']").click()
        assert not browser.find_element("id", "dlgdisable").is_displayed()
        assert "--allow-control" in browser.find_element("id", "dlgerror").text
        browser.execute_script("document.getElementById('chutedialog').close()")

        # the search finds a parcel's decision, as the audit has it
        box = browser.find_element("id", "findkey")
        box.send_keys("7")
        browser.find_element("css selector", "#findform button").click()
        rows = wait(lambda: browser.execute_script(
            "return [...document.querySelectorAll('#findresult tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))"), what="search results")
        audit = read_audit(tmp_path / "audit").select(["parcel_id", "reads", "chute",
                                                       "reason"]).to_pylist()
        expected = [r for r in audit if r["parcel_id"] == 7 or "7" in (r["reads"] or [])]
        assert len(rows) == len(expected) >= 1
        assert [(int(r[2]), int(r[4]), r[5]) for r in rows] == [
            (e["parcel_id"], e["chute"], e["reason"]) for e in expected]
        assert "oldest first" in browser.find_element("id", "findstatus").text

        # at least one update a second, and the page keeps up
        stats = browser.execute_script("return window.wallStats")
        time.sleep(3)
        later = browser.execute_script("return window.wallStats")
        assert later["messages"] - stats["messages"] >= 3
        assert later["applied"] > stats["applied"]
        lags = later["lagsMs"][-10:]
        print(f"\nchute 67 shown full after {shown_after_s:.2f} s; update lag median "
              f"{statistics.median(lags):.0f} ms, max {max(lags):.0f} ms")
        browser.save_screenshot(str(tmp_path / "chute-wall.png"))
        assert (tmp_path / "chute-wall.png").stat().st_size > 10_000
        target = os.environ.get("SORTER_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "chute-wall.png", target)
    finally:
        code = demo.stop()
    assert code == 0, "".join(demo.seen)


HUB_CHUTES = 600


def hub_plan(path: Path) -> Path:
    """A plan of 600 chutes: 590 destinations of one chute each, 5 special, 5 spare."""
    lines = ['[plan]', 'name = "Big hub"', 'version = "1"', 'home_country = "KZ"',
             f'chutes = ["1-{HUB_CHUTES}"]', '', '[special]', 'no_read = 591', 'invalid = 592',
             'conflict = 593', 'unknown_destination = 594', 'overflow = 595', '']
    for c in range(1, 591):
        lines += [f"[destinations.D{c:03d}]", f"chutes = [{c}]", ""]
    lines += ["[rules.country]", 'KZ = "D001"', ""]
    path.write_text("\n".join(lines))
    return path


def test_600_chutes_render_and_keep_up(tmp_path, browser):
    """A hub's wall: 600 tiles, every chute changing state twice a second for 10 s; the page
    applies every update (no backlog) and shows the last states within 2 s."""
    from engine_harness import EngineProcess

    plan_path = hub_plan(tmp_path / "hub.toml")
    engine = EngineProcess(tmp_path, "--plan", str(plan_path))
    dash = None
    try:
        dash = Command(["dashboard", "--engine", engine.endpoints["control"], "--listen",
                        "127.0.0.1:0", "--audit-dir", str(engine.audit_dir)], tmp_path)
        url = dash.wait_for(r"dashboard: (http://127\.0\.0\.1:\d+/) .*read-only").group(1)
        browser.get(url)
        wait(lambda: browser.execute_script(
            "return document.querySelectorAll('.tile').length") == HUB_CHUTES, what="600 tiles")
        chutes = list(range(1, HUB_CHUTES + 1))
        start = browser.execute_script("return window.wallStats")
        cycle = ("full", "disabled", "available")
        for i in range(20):
            states = [cycle[(c + i) % 3] for c in chutes]
            engine.feedback.send(wire.encode_chute_status(chutes, states))
            sent = time.monotonic()
            engine.send_scans([[b"RR473124829GB"]] * 50, first_parcel=i * 50)
            time.sleep(0.5)
        final = {c: states[c - 1] for c in chutes}

        def shown():
            return browser.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('.tile')]"
                ".map(t => [t.dataset.chute, t.dataset.state]))")
        wait(lambda: {int(k): v for k, v in shown().items()} == final, timeout_s=2.0,
             what="the last states of all 600 chutes shown")
        caught_up_s = time.monotonic() - sent
        stats = browser.execute_script("return window.wallStats")
        messages = stats["messages"] - start["messages"]
        frames = stats["frames"] - start["frames"]
        lags = stats["lagsMs"][-messages:]
        print(f"\n600 chutes: caught up {caught_up_s:.2f} s after the last change; "
              f"{messages} updates, {stats['tileUpdates'] - start['tileUpdates']} tile "
              f"updates, {frames} frames ({stats['longFrames']} over 100 ms); update lag "
              f"median {statistics.median(lags):.0f} ms, max {max(lags):.0f} ms")
        assert messages >= 15                        # 10 s at two updates a second
        assert stats["applied"] - start["applied"] >= messages * 0.5
        assert statistics.median(lags) < 1000        # the page keeps up: no growing backlog
        assert max(lags[-5:]) < 2000
    finally:
        if dash is not None:
            assert dash.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert engine.stop() == 0
