"""`python -m bench plc`: the PLC gateway per protocol (TCP telegrams, OPC UA, Modbus TCP).

For each protocol, in one run:

- `decisions_per_s`: sustained rate through the gateway and a simulated PLC with confirmations
  back: a stand-in engine PUSHes DECISION messages (256 decisions each) and counts the
  SORT_CONFIRM records coming back on its feedback PULL, keeping at most `window` decisions
  unconfirmed; rate = decisions / (last confirmation - first send). The PLC is the simulated
  one (`echo=True`: every parcel sorted at once) in a child process, the gateway a thread of
  this process, as `sorter plc` runs it.
- `gateway_cpu_us_per_decision` (this process: the gateway plus the stand-in engine's sends
  and receives) and `plc_sim_cpu_us_per_decision` (the simulated PLC's process): CPU time per
  decision during the throughput run, from /proc; with `loadavg_1m` they tell a rate limited
  by a shared, busy machine from one limited by the code (1e6 / the larger is the rate with a
  core each).
- `added_p50_us` / `added_p99_us`: how much later a decision reaches the PLC through the
  gateway than a PULL socket reading the decisions endpoint directly, measured side by side:
  one-decision messages, paced, whose tracking id is the send time (CLOCK_MONOTONIC, shared by
  the processes); the direct reader and the simulated PLC (in child processes) each record
  receive time - tracking id. added = through-gateway percentile - direct percentile.

Goals (issue 11): TCP >= 50,000 decisions/s and added p99 <= 1 ms; OPC UA and Modbus >= 1,000
decisions/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

PROTOCOLS = ("tcp", "opcua", "modbus")
GOALS = {"tcp": (50_000, 1000.0), "opcua": (1_000, None), "modbus": (1_000, None)}
SIZES = {"tcp": (200_000, 2000, 0.002), "opcua": (10_000, 400, 0.01),
         "modbus": (10_000, 400, 0.01)}      # throughput decisions, latency samples, pacing s
WINDOW = {"tcp": 8192, "opcua": 1024, "modbus": 512}


def add_arguments(parser) -> None:
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="comma-separated subset of tcp,opcua,modbus")
    parser.add_argument("--preset", default="s7_binary", help="TCP telegram preset")


# -- child processes -------------------------------------------------------------------------

def _child(argv: list[str]) -> int:
    """`python -m bench.plc --child direct ENDPOINT N` or `--child tcp|opcua|modbus PRESET`."""
    kind = argv[0]
    if kind == "direct":
        import zmq
        from sorter import wire
        endpoint, n = argv[1], int(argv[2])
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(endpoint)
        print(json.dumps({"ready": True}), flush=True)
        lat = []
        while len(lat) < n:
            frame = pull.recv()
            now = time.monotonic_ns()
            h, p = wire.decode_message(frame)
            if h.kind == wire.DECISION:
                lat += (now - p.parcel_id.astype(np.int64)).tolist()
        pull.close()
        ctx.term()
        print(json.dumps({"latency_ns": lat}), flush=True)
        return 0
    lat: list[int] = []
    if kind == "tcp":
        from plc.telegrams import load_preset
        from simulators.plc_tcp import TcpTelegramPlc
        sim = TcpTelegramPlc(load_preset(argv[1]), echo=True,
                             session_kw={"window": WINDOW["tcp"]}).start()
        address = {"host": sim.address[0], "port": sim.address[1]}
    elif kind == "opcua":
        from simulators.plc_opcua import OpcUaPlc
        sim = OpcUaPlc(echo=True).start()
        address = {"url": sim.url}
    else:
        from simulators.plc_modbus import ModbusPlc
        sim = ModbusPlc(echo=True).start()
        address = {"host": "127.0.0.1", "port": sim.port}
    instruct = sim.machine.instruct

    def timed(tracking_id, chute, reason, now_s):
        lat.append(time.monotonic_ns() - tracking_id)
        instruct(tracking_id, chute, reason, now_s)
    sim.machine.instruct = timed
    print(json.dumps(address), flush=True)
    for line in sys.stdin:              # "reset" clears the samples; EOF ends
        if line.strip() == "reset":
            with sim.lock:
                lat.clear()
            print(json.dumps({"ok": True}), flush=True)
        elif line.strip() == "dump":
            with sim.lock:
                print(json.dumps({"latency_ns": lat}), flush=True)
    sim.stop()
    return 0


def _spawn(*args: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.plc", "--child", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"bench child {args} did not start")
    return proc, json.loads(line)


def _ask(proc: subprocess.Popen, cmd: str) -> dict:
    proc.stdin.write(cmd + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


# -- one protocol -----------------------------------------------------------------------------

class _Engine:
    def __init__(self):
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.decisions = f"tcp://127.0.0.1:{self.push.bind_to_random_port('tcp://127.0.0.1')}"
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.feedback = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"

    def message(self, ids: np.ndarray) -> bytes:
        from sorter import wire
        n = len(ids)
        return wire.encode_decisions("bench", ids, ids, ids, np.full(n, 5, np.uint16),
                                     np.zeros(n, np.uint8), np.ones(n, np.uint16))

    def confirms(self, timeout_ms: float) -> int:
        from sorter import wire
        n = 0
        if self.pull.poll(timeout_ms):
            while True:
                try:
                    frame = self.pull.recv(self.zmq.NOBLOCK)
                except self.zmq.Again:
                    break
                h, p = wire.decode_message(frame)
                if h.kind == wire.SORT_CONFIRM:
                    n += len(p)
        return n

    def close(self):
        self.ctx.destroy(linger=0)


def _gateway(protocol: str, address: dict, eng: _Engine, preset: str):
    if protocol == "tcp":
        from plc.tcp import TcpGateway
        from plc.telegrams import load_preset
        return TcpGateway(load_preset(preset), eng.decisions, eng.feedback,
                          connect=(address["host"], address["port"]), max_age_s=None,
                          window=WINDOW["tcp"])
    if protocol == "opcua":
        from plc.models import load_nodes
        from plc.opcua import OpcUaGateway
        return OpcUaGateway(address["url"], eng.decisions, eng.feedback, load_nodes(),
                            max_age_s=None)
    from plc.models import load_registers
    from plc.modbus import ModbusGateway
    return ModbusGateway(address["host"], address["port"], eng.decisions, eng.feedback,
                         load_registers(), max_age_s=None)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) / 1000.0


def measure(protocol: str, n: int, samples: int, pace_s: float, preset: str) -> dict:
    eng = _Engine()
    sim, address = _spawn(protocol, preset)
    try:
        gw = _gateway(protocol, address, eng, preset).start()
        if not gw.connected.wait(60):
            raise RuntimeError(f"{protocol}: the gateway did not connect to the simulated PLC")
        time.sleep(0.3)
        # throughput
        window, batch = WINDOW[protocol], 256
        sent = got = 0
        next_id = 1
        cpu_gw, cpu_sim = _cpu_s(os.getpid()), _cpu_s(sim.pid)
        t0 = time.monotonic()
        deadline = t0 + max(60.0, n / 500)
        while got < n and time.monotonic() < deadline:
            if sent < n and sent - got + batch <= window:
                k = min(batch, n - sent)
                eng.push.send(eng.message(np.arange(next_id, next_id + k, dtype=np.uint64)))
                next_id += k
                sent += k
                got += eng.confirms(0)
            else:
                got += eng.confirms(50)
        wall = time.monotonic() - t0
        rate = got / wall
        cpu_gw, cpu_sim = _cpu_s(os.getpid()) - cpu_gw, _cpu_s(sim.pid) - cpu_sim
        # latency through the gateway: tracking id = send time
        _ask(sim, "reset")
        for _ in range(samples):
            eng.push.send(eng.message(np.array([time.monotonic_ns()], np.uint64)))
            eng.confirms(0)
            time.sleep(pace_s)
        time.sleep(0.5)
        via = _ask(sim, "dump")["latency_ns"]
        gw.stop()
        snap = gw.snapshot()
        # latency reading the decisions socket directly, same pacing, same sender
        direct_proc, _ = _spawn("direct", eng.decisions, str(samples))
        time.sleep(0.5)
        for _ in range(samples):
            eng.push.send(eng.message(np.array([time.monotonic_ns()], np.uint64)))
            time.sleep(pace_s)
        direct = json.loads(direct_proc.stdout.readline())["latency_ns"]
        direct_proc.wait(30)
    finally:
        sim.stdin.close()
        sim.wait(30)
        eng.close()
    out = {
        "decisions": got, "wall_s": round(wall, 3), "decisions_per_s": round(rate, 1),
        "gateway_cpu_us_per_decision": round(cpu_gw / max(got, 1) * 1e6, 2),
        "plc_sim_cpu_us_per_decision": round(cpu_sim / max(got, 1) * 1e6, 2),
        "loadavg_1m": os.getloadavg()[0],
        "latency_samples": len(via),
        "direct_p50_us": round(_pct(direct, 50), 1), "direct_p99_us": round(_pct(direct, 99), 1),
        "via_gateway_p50_us": round(_pct(via, 50), 1), "via_gateway_p99_us": round(_pct(via, 99), 1),
        "stale_dropped": snap.get("stale_dropped", 0), "link_downs": snap.get("link_downs", 0),
    }
    out["added_p50_us"] = round(out["via_gateway_p50_us"] - out["direct_p50_us"], 1)
    out["added_p99_us"] = round(out["via_gateway_p99_us"] - out["direct_p99_us"], 1)
    goal_rate, goal_p99 = GOALS[protocol]
    out["goal_decisions_per_s"] = goal_rate
    out["goal_added_p99_us"] = goal_p99
    out["meets_goal"] = rate >= goal_rate and (goal_p99 is None or out["added_p99_us"] <= goal_p99)
    return out


def run(args) -> dict:
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    result = {"preset": args.preset, "protocols": {}}
    for p in protocols:
        if p not in PROTOCOLS:
            raise SystemExit(f"bench plc: unknown protocol {p!r}")
        n, samples, pace = SIZES[p]
        if args.quick:
            n, samples = n // 10, samples // 4
        result["protocols"][p] = measure(p, n, samples, pace, args.preset)
    return result


def report(r: dict) -> str:
    lines = [f"{'protocol':<8} {'decisions/s':>12} {'added p50 us':>13} {'added p99 us':>13} "
             f"{'direct p99 us':>14} {'cpu us gw/plc':>14} {'load':>5}  goal"]
    for p, x in r["protocols"].items():
        lines.append(f"{p:<8} {x['decisions_per_s']:>12,.0f} {x['added_p50_us']:>13.1f} "
                     f"{x['added_p99_us']:>13.1f} {x['direct_p99_us']:>14.1f} "
                     f"{x['gateway_cpu_us_per_decision']:>6.1f}/{x['plc_sim_cpu_us_per_decision']:<7.1f}"
                     f"{x['loadavg_1m']:>5.1f}  {'met' if x['meets_goal'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    p = argparse.ArgumentParser()
    add_arguments(p)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print(report(run(a)))
