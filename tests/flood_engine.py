"""Flood a real engine with 64-event SCAN messages from one PUSH for N seconds (a PLC reading);
print its RSS before, at its peak and after the drain (docs/engine.md, "Memory").

    .venv/bin/python tests/flood_engine.py 3 [sorter run flags, e.g. --config FILE]
"""
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from engine_harness import EngineProcess
from sorter import wire
from sorter.core.events import EventBatch
extra = sys.argv[2:]
seconds = float(sys.argv[1])
tmp = Path(tempfile.mkdtemp(prefix="flood_"))
e = EngineProcess(tmp, *extra)
def rss():
    for line in open(f"/proc/{e.proc.pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) // 1024
n = 64
ids = np.arange(n, dtype=np.uint64)
b = EventBatch.from_reads([[b"050010"]] * n, parcel_ids=ids, ts_ns=np.full(n, time.time_ns(), np.int64))
frame = wire.encode_scan(b, ids)
got = [0]; stop = [False]
def drain():
    e.plc.setsockopt(zmq.RCVTIMEO, 500)
    while not stop[0]:
        try: e.plc.recv(); got[0] += 1
        except zmq.Again: pass
t = threading.Thread(target=drain); t.start()
peak = base = rss()
sent = 0; t0 = time.monotonic(); last = t0
e.scanner.setsockopt(zmq.SNDTIMEO, 0)
while time.monotonic() - t0 < seconds:
    for _ in range(1000):
        try: e.scanner.send(frame, copy=True); sent += 1
        except zmq.Again: break
    if time.monotonic() - last > 0.1:
        peak = max(peak, rss()); last = time.monotonic()
t_sent = time.monotonic() - t0
while True:
    st = e.control("status")["counters"]
    peak = max(peak, rss())
    if st["events"] >= sent * n: break
    time.sleep(0.1)
t_drain = time.monotonic() - t0
time.sleep(1.5)
after = rss()
print(f"sent {sent} msgs ({sent*n/t_sent/1e6:.2f} M events/s offered), drained in {t_drain:.1f} s; RSS MB base {base} peak {peak} after {after}")
stop[0] = True; t.join(); e.stop()
