"""Benchmark harness: `python -m bench SUITE [--json PATH] [--quick] [--seed N] ...`.

Each suite is a module registered in `SUITES` (name -> (module, one-line help)). A suite module
provides

    add_arguments(parser)   # its own options (the common --json/--quick/--seed are added here)
    run(args) -> dict       # build inputs, measure, return a JSON-able result
    report(result) -> str   # a short human summary (optional)

and sets `result["ok"] = False` when the run must fail (the JSON is still written, the exit
status is 1). Only the selected suite is imported, so a suite may import heavy dependencies.
See bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

SUITES: dict[str, tuple[str, str]] = {
    "core": ("bench.core", "decode + validate + route throughput of the compiled core vs the "
                           "reference router"),
    # "engine": ("bench.engine", "..."),  "audit": ("bench.audit", "..."),
}

QUICK_FACTOR = 10      # --quick divides the suite's sizes by about this much


def _count(text: str) -> int:
    """A size: 1000000, 1_000_000, 100k, 1M, 1.5M."""
    t = text.strip().replace("_", "").lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = int(round(float(t) * scale))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"count must not be negative: {text!r}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--json", metavar="PATH", type=Path,
                   help="write the result as JSON to PATH (directories are created)")
    g.add_argument("--quick", action="store_true",
                   help=f"shrink the default sizes about {QUICK_FACTOR}x (a smoke run)")
    g.add_argument("--seed", type=int, default=0, help="seed of every generator (default 0)")
    return common


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; the options of `selected` (a suite name) are added when given."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks of the sorting engine.")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    common = _common()
    for name, (module, help_text) in SUITES.items():
        sp = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == selected:        # only the chosen suite is imported
            importlib.import_module(module).add_arguments(sp)
    return parser


def machine_info() -> dict:
    """Where a result was measured: interpreter, platform, CPUs, library versions."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f
                              if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "numpy": version("numpy"),
        "pyarrow": version("pyarrow"),
        "Cython": version("Cython"),
        "sorter": version("sorter"),
    }


def write_json(path: Path, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The suite is the first positional argument (the top-level parser has no valued options).
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    module = importlib.import_module(SUITES[args.suite][0])
    started = time.time()
    result = {"suite": args.suite, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime(started))}
    result.update(module.run(args))
    result["wall_s"] = round(time.time() - started, 3)
    if args.json is not None:
        write_json(args.json, result)
    if hasattr(module, "report"):
        print(module.report(result))
    if args.json is not None:
        print(f"wrote {args.json}")
    if not result.get("ok", True):
        print(f"bench {args.suite}: FAILED: {result.get('error', 'see the JSON')}",
              file=sys.stderr)
        return 1
    return 0
