"""The naive integrator: the sort script a user might write instead of running the engine.

    python -m bench.naive --plan-dir DIR [--in ENDPOINT] [--out ENDPOINT]

A peer measured by `python -m bench peers`, not part of the product. It is what a competent
integrator writes in an afternoon: plain Python, one JSON message per event in and one JSON
message per decision out over ZeroMQ (PULL bind -> PUSH bind, like `bench.relay`), and routing
with Python dicts:

- S10 ids: pattern and check digit in Python, service `E...` -> EMS, else the manifest dict
  (item id -> postcode, country);
- bare postcodes (`050012`, `A01P3K4`, `A01 P3K4`) and GS1 labels (`]C1...`: AI 00, 420, 421,
  401, 403 split at GS; SSCC check digit checked): longest prefix by a loop over lengths, each
  a dict lookup; a foreign country by the country dict;
- the first read that yields a destination wins (no conflict detection), the destination's
  first chute is taken (no chute states, no round robin, no recirculation).

DIR holds `plan.json` (home country, destinations and their chutes, special chutes, prefix,
country and service rules) and `manifest.csv` (item_id, postcode, country), written by
`write_plan_dir`. Scan messages are `{"parcel_id", "reads": [latin-1 strings],
"recirculations", "ts_ns"}`; decisions are `{"parcel_id", "chute", "reason", "destination"}`.
When bound, one JSON `ready` line goes to stderr with the endpoints and the plan load time;
SIGTERM / SIGINT stop it (a `shutdown` line with the message count, exit 0).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
GS = "\x1d"
UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
ALNUM = UPPER | frozenset("0123456789")

NO_READ, INVALID, UNKNOWN, SORTED = "no_read", "invalid", "unknown_destination", "sorted"


def write_plan_dir(plan, directory: Path) -> Path:
    """Write `plan` as the naive script reads it: plan.json + manifest.csv (Arrow's CSV
    writer, quoted strings, empty = null)."""
    import pyarrow.csv as pacsv

    from sorter.core.countries import alpha2_to_numeric

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = plan.destination_ids()
    doc = {
        "home": plan.home_country,
        "home_numeric": alpha2_to_numeric(plan.home_country),
        "destinations": [d.name for d in plan.destinations],
        "chutes": [list(d.chutes) for d in plan.destinations],
        "special": dict(plan.special),
        "prefixes": {p.replace(" ", ""): ids[d] for p, d in plan.postcode_rules.items()},
        "countries": {c: ids[d] for c, d in plan.country_rules.items()},
        "country_numeric": {str(alpha2_to_numeric(c)): c for c in plan.country_rules},
        "services": {s: ids[d] for s, d in plan.service_rules.items()},
    }
    (directory / "plan.json").write_text(json.dumps(doc))
    if plan.manifest is not None:
        pacsv.write_csv(plan.manifest.select(["item_id", "postcode", "country"]),
                        str(directory / "manifest.csv"))
    else:
        (directory / "manifest.csv").write_text('"item_id","postcode","country"\n')
    return directory


class NaiveRouter:
    """Dict-per-lookup routing of one event at a time (see the module docstring)."""

    def __init__(self, plan_dir):
        plan_dir = Path(plan_dir)
        doc = json.loads((plan_dir / "plan.json").read_text())
        self.home = doc["home"]
        self.home_numeric = int(doc["home_numeric"])
        self.names = doc["destinations"]
        self.chutes = doc["chutes"]
        self.special = doc["special"]
        self.prefixes = doc["prefixes"]
        self.countries = doc["countries"]
        self.numeric = {int(k): v for k, v in doc["country_numeric"].items()}
        self.services = doc["services"]
        self.max_prefix = max((len(p) for p in self.prefixes), default=0)
        self.manifest = {}
        with open(plan_dir / "manifest.csv", newline="") as f:
            rows = csv.reader(f)
            next(rows, None)
            for item_id, postcode, country in rows:
                self.manifest.setdefault(item_id, (postcode or None, country or None))

    # -- one read -------------------------------------------------------------------------
    def longest_prefix(self, postcode: str):
        for n in range(min(len(postcode), self.max_prefix), 0, -1):
            dest = self.prefixes.get(postcode[:n])
            if dest is not None:
                return dest
        return None

    def address(self, country, postcode, item_id=None):
        """country: alpha-2 or None."""
        if country is not None and country != self.home:
            return self.countries.get(country)
        if postcode:
            dest = self.longest_prefix(postcode)
            if dest is not None:
                return dest
        if item_id is not None:
            row = self.manifest.get(item_id)
            if row is not None:
                pc, c = row
                return self.address(c if c is not None else (self.home if pc else None), pc)
        if country == self.home:
            return self.countries.get(self.home)
        return None

    @staticmethod
    def s10_ok(raw: str) -> bool:
        if not (raw[0] in UPPER and raw[1] in UPPER and raw[2:11].isdigit()
                and raw[11] in UPPER and raw[12] in UPPER) or raw[0] in "JKSTW":
            return False
        s = sum(int(c) * w for c, w in zip(raw[2:10], S10_WEIGHTS))
        c = 11 - s % 11
        return int(raw[10]) == (0 if c == 10 else 5 if c == 11 else c)

    @staticmethod
    def sscc_ok(sscc: str) -> bool:
        if len(sscc) != 18 or not sscc.isdigit():
            return False
        s = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(sscc[:17]))
        return (10 - s % 10) % 10 == int(sscc[17])

    def gs1(self, msg: str):
        """(valid, destination) of a GS1 element string (symbology identifier removed)."""
        sscc = postcode = country = None
        for part in msg.split(GS):
            while part:
                if part.startswith("00"):
                    sscc, part = part[2:20], part[20:]
                    if not self.sscc_ok(sscc):
                        return False, None
                elif part.startswith("420"):
                    if postcode is None:
                        postcode = part[3:]
                    part = ""
                elif part.startswith("421"):
                    country, postcode, part = part[3:6], part[6:], ""
                elif part.startswith(("401", "403")):
                    part = ""
                elif part.startswith(("01", "10")):        # GTIN, batch: not routed on
                    part = part[16:] if part.startswith("01") else ""
                else:
                    return False, None
        if country is not None:
            if not country.isdigit():
                return False, None
            alpha2 = self.numeric.get(int(country))
            if int(country) != self.home_numeric:
                return True, self.countries.get(alpha2) if alpha2 else None
        return True, self.address(self.home if (postcode or country) else None, postcode,
                                  sscc)

    def read(self, raw: str):
        """(valid, destination or None) of one read."""
        n = len(raw)
        if raw.startswith("]C1"):
            return self.gs1(raw[3:])
        if n == 13 and raw[:2].isalpha():
            if not self.s10_ok(raw):
                return False, None
            service = self.services.get(raw[:2], self.services.get(raw[0]))
            if service is not None:
                return True, service
            return True, self.address(None, None, raw)
        if (n == 6 and raw.isdigit()) or (n in (7, 8) and raw[0] in UPPER):
            pc = raw.replace(" ", "")
            if len(pc) == 7 and raw[1:3].isdigit() and all(c in ALNUM for c in pc):
                return True, self.address(self.home, pc)
            if len(pc) == 6 and pc.isdigit():
                return True, self.address(self.home, pc)
            return False, None
        if raw[:1].isdigit() or raw[:1] == GS:
            return self.gs1(raw)
        return False, None

    # -- one event ------------------------------------------------------------------------
    def decide(self, reads: list[str]) -> tuple[int, str, int]:
        """(chute, reason, destination index or -1): first read with a destination wins."""
        if not reads:
            return self.special.get(NO_READ, 0), NO_READ, -1
        any_valid = False
        for raw in reads:
            valid, dest = self.read(raw)
            if dest is not None:
                return self.chutes[dest][0], SORTED, dest
            any_valid = any_valid or valid
        reason = UNKNOWN if any_valid else INVALID
        return self.special.get(reason, 0), reason, -1

    def handle(self, message: bytes) -> bytes:
        """One scan message in, one decision message out (JSON both ways)."""
        scan = json.loads(message)
        chute, reason, dest = self.decide(scan["reads"])
        return json.dumps({"parcel_id": scan["parcel_id"], "chute": chute, "reason": reason,
                           "destination": self.names[dest] if dest >= 0 else None}).encode()


class _Stop(Exception):
    pass


def _stop(*_args) -> None:
    raise _Stop()


def _log(event: str, **fields) -> None:
    print(json.dumps({"ts": round(time.time(), 6), "event": event, **fields}),
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    import zmq

    p = argparse.ArgumentParser(prog="python -m bench.naive",
                                description="A naive integrator's sort script (a peer of the "
                                            "engine in `python -m bench peers`).")
    p.add_argument("--plan-dir", required=True, type=Path,
                   help="directory with plan.json and manifest.csv (bench.naive.write_plan_dir)")
    p.add_argument("--in", dest="inp", default="tcp://127.0.0.1:*", metavar="ENDPOINT")
    p.add_argument("--out", default="tcp://127.0.0.1:*", metavar="ENDPOINT")
    args = p.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    t0 = time.perf_counter()
    router = NaiveRouter(args.plan_dir)
    load_s = time.perf_counter() - t0
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.setsockopt(zmq.LINGER, 0)
    pull.bind(args.inp)
    push.bind(args.out)
    _log("ready", kind="naive", pid=os.getpid(), load_s=round(load_s, 3),
         manifest_rows=len(router.manifest),
         endpoints={"in": pull.getsockopt_string(zmq.LAST_ENDPOINT),
                    "out": push.getsockopt_string(zmq.LAST_ENDPOINT)})
    # a receive timeout, so that the main thread wakes up to run the SIGTERM handler even when
    # the signal was delivered to one of libzmq's threads (the blocked recv sees no EINTR then)
    pull.setsockopt(zmq.RCVTIMEO, 100)
    n = 0
    try:
        recv, send, handle = pull.recv, push.send, router.handle
        while True:
            try:
                msg = recv()
            except zmq.Again:
                continue
            send(handle(msg))
            n += 1
    except _Stop:
        pass
    finally:
        pull.close()
        push.close()
        ctx.term()
    _log("shutdown", kind="naive", messages=n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
