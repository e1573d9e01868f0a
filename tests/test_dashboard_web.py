"""The dashboard's server and model without a browser: its HTTP API against a real engine,
the per-browser updates, read-only vs --allow-control, the alarms, and the audit lookup."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dashboard.app import DashboardServer, Settings, _message
from dashboard.view import LineView
from engine_harness import EngineProcess
from sorter.audit.query import find
from sorter.plan import load_plan


def get(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type})
    return get_request(req)


def get_request(req) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_model(url: str, predicate, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, body = get(url + "api/status")
        if body["model"] and predicate(body["model"]):
            return body["model"]
        time.sleep(0.1)
    raise AssertionError(f"model condition not met: {body}")


@pytest.fixture
def engine(tmp_path):
    e = EngineProcess(tmp_path)
    try:
        yield e
    finally:
        e.stop()


def serve(engine, **kw) -> DashboardServer:
    return DashboardServer(Settings(engine=engine.endpoints["control"],
                                    audit_dir=str(engine.audit_dir), interval_s=0.2, **kw),
                           "127.0.0.1:0").start()


def test_read_only_by_default(engine):
    server = serve(engine)
    try:
        model = wait_model(server.url, lambda m: m["engine"] == "up")
        assert [c["chute"] for c in model["chutes"]] == list(load_plan().chutes)
        code, body = post(server.url + "api/chute/5", {"state": "disabled"})
        assert code == 403 and "--allow-control" in body["error"]
        assert engine.control("status")["chutes_unavailable"] == {}
    finally:
        server.stop()


def test_allow_control_sets_a_chute_through_the_engine(engine):
    server = serve(engine, allow_control=True)
    try:
        code, body = post(server.url + "api/chute/5", {"state": "disabled"})
        assert (code, body["ok"]) == (200, True)
        assert engine.control("status")["chutes_unavailable"] == {"5": "disabled"}
        model = wait_model(server.url, lambda m: m["chutes"][4]["state"] == "disabled")
        assert model["chutes"][4]["chute"] == 5
        assert post(server.url + "api/chute/5", {"state": "broken"})[0] == 400
        assert post(server.url + "api/chute/5", b"state=available",
                    "application/x-www-form-urlencoded")[0] == 415
        assert post(server.url + "api/chute/5", {"state": "available"})[0] == 200
        assert engine.control("status")["chutes_unavailable"] == {}
    finally:
        server.stop()


def test_events_send_the_layout_once_then_only_changed_chutes(engine):
    server = serve(engine)
    try:
        with urllib.request.urlopen(server.url + "events", timeout=10) as stream:
            def updates():
                for raw in stream:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
            it = updates()
            first = next(it)
            plan = load_plan()
            assert [c for c, _ in first["layout"]] == list(plan.chutes)
            assert len(first["chutes"]) == len(plan.chutes) and first["control"] is False
            engine.send_scans([[b"050010"]] * 3)
            engine.receive_decisions(3)
            changed = []
            for update in it:
                assert "layout" not in update
                changed += update["chutes"]
                if any(c[0] == 5 and c[2] == 3 for c in update["chutes"]):
                    break
            assert {c[0] for c in changed} == {5}     # only the chute that changed
            assert changed[-1] == [5, "available", 3, None, 3]
    finally:
        server.stop()


def test_message_diff_per_browser():
    settings = Settings()
    model = {"t": 1.0, "engine": "up", "line": {}, "alarms": [], "chutes": [
        {"chute": 1, "label": "A", "state": "available", "since_emptied": 0, "fill": None,
         "decisions": 0},
        {"chute": 2, "label": "B", "state": "full", "since_emptied": 4, "fill": 0.5,
         "decisions": 9}]}
    sent: dict = {}
    first = _message(model, sent, settings)
    assert first["layout"] == [[1, "A"], [2, "B"]] and len(first["chutes"]) == 2
    assert _message(model, sent, settings)["chutes"] == []
    model["chutes"][1] = {**model["chutes"][1], "state": "available"}
    again = _message(model, sent, settings)
    assert "layout" not in again and again["chutes"] == [[2, "available", 4, 0.5, 9]]
    model["chutes"] = model["chutes"][:1]               # another plan: a new layout
    assert _message(model, sent, settings)["layout"] == [[1, "A"]]


def test_alarms_from_counters_and_from_fields(engine):
    view = LineView(scanner_silent_s=0.5, plc_silent_s=0.5, undelivered_window_s=0.5)
    status = engine.control("status")
    t = 1000.0
    alarms = {a["name"]: a for a in view.update(status, t)["alarms"]}
    assert not any(a["active"] for a in alarms.values())
    # the engine reports its audit's state itself (Audit v2): the alarm reads that field
    assert alarms["audit_unavailable"]["source"] == "status.audit_unavailable"
    # nothing scanned and no PLC side: silence is an alarm once it lasts
    alarms = {a["name"]: a for a in view.update(status, t + 1)["alarms"]}
    assert alarms["scanner_silent"]["active"] and alarms["plc_link_down"]["active"]
    # no PLC gateway connected: decisions are undelivered
    engine.plc.close()

    def undelivered(s):          # until the engine has seen the gateway go: scan again
        if s["counters"]["decisions_undelivered"]:
            return True
        engine.send_scans([[b"050010"]])
        time.sleep(0.1)
    status = engine.wait_until(undelivered)
    model = view.update(status, t + 1.2)
    alarms = {a["name"]: a for a in model["alarms"]}
    assert alarms["decisions_undelivered"]["active"]
    assert not alarms["scanner_silent"]["active"]                 # a scan came
    assert not {a["name"]: a for a in view.update(status, t + 2)["alarms"]}[
        "decisions_undelivered"]["active"]                        # and no more since
    # the engine's own fields win where it has them
    own = {**status, "audit_unavailable": True, "plc_link_up": True, "scanners_silent": [3]}
    alarms = {a["name"]: a for a in view.update(own, t + 2.1)["alarms"]}
    assert alarms["audit_unavailable"]["active"] and not alarms["plc_link_down"]["active"]
    assert alarms["scanner_silent"]["active"] and "3" in alarms["scanner_silent"]["text"]
    gone = view.update(None, t + 3)
    assert gone["engine"] == "unreachable"
    assert {a["name"] for a in gone["alarms"] if a["active"]} == {"engine_unreachable"}


def test_rates_and_read_rate_from_counters(engine):
    view = LineView()
    view.update(engine.control("status"), 0.0)
    engine.send_scans([[b"050010"]] * 6 + [[]] * 2)
    engine.receive_decisions(8)
    model = view.update(engine.wait_until(lambda s: s["counters"]["events"] == 8), 1.0)
    line = model["line"]
    assert line["decisions_per_s"] == pytest.approx(8.0)
    assert line["read_rate"] == pytest.approx(6 / 8)
    assert line["reasons"]["sorted"] == 6 and line["reasons"]["no_read"] == 2
    assert line["plan_version"] == load_plan().version


def test_find_every_decision_for_a_parcel_or_barcode_oldest_first(tmp_path):
    first = EngineProcess(tmp_path)
    try:
        first.send_scans([[b"050010"], [b"RR473124829GB"]], first_parcel=41)
        first.receive_decisions(2)
    finally:
        assert first.stop() == 0                   # seals its file
    second = EngineProcess(tmp_path)               # the same audit directory, a live file
    try:
        second.send_scans([[b"RR473124829GB", b"050010"]], first_parcel=42)
        second.receive_decisions(1)
        second.wait_until(lambda s: s["counters"]["events"] == 1)
        audit = second.audit_dir
        by_id = find(audit, "42")
        assert [r["parcel_id"] for r in by_id] == [42, 42]
        assert by_id[0]["reads"] == ["RR473124829GB"]
        assert by_id[1]["reads"] == ["RR473124829GB", "050010"]
        assert by_id[0]["ts"] <= by_id[1]["ts"]
        assert [r["parcel_id"] for r in find(audit, "050010")] == [41, 42]
        assert find(audit, "RR000000000GB") == [] and find(tmp_path / "nothing", "1") == []
    finally:
        assert second.stop() == 0


def test_cli_refuses_a_port_in_use(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "sorter.cli", "dashboard", "--listen",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"sorter dashboard: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in out.stderr
