"""Benchmark harness.

    python -m bench [--quick] [--json PATH] [--plot PATH] [--seed N] [--suites LIST]
                    [--update-readme | --no-readme] [--from JSON]      # every suite
    python -m bench SUITE [--json PATH] [--plot PATH] [--quick] [--seed N] [suite options]

Each suite is a module registered in `SUITES` (name -> (module, one-line help)). A suite module
provides

    add_arguments(parser)   # its own options (the common --json/--plot/--quick/--seed are added here)
    run(args) -> dict       # build inputs, measure, return a JSON-able result
    report(result) -> str   # a short human summary (optional)

and sets `result["ok"] = False` when the run must fail (the JSON is still written, the exit
status is 1). With a suite name only that suite is imported, so a suite may import heavy
dependencies. Without one, every suite runs in turn with its default sizes (`--quick`: the
smoke sizes), one JSON holds them all, `bench.figures` makes the headline table and
`bench.plots` the PNGs; a full run of every suite also rewrites the table in bench/README.md.
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
import traceback
from importlib import metadata
from pathlib import Path

SUITES: dict[str, tuple[str, str]] = {
    "core": ("bench.core", "decode + validate + route throughput of the compiled core vs the "
                           "reference router, and its batch-size scaling"),
    "peers": ("bench.peers", "the core beside a naive integrator's script (dicts, JSON over "
                             "ZeroMQ) and DuckDB SQL, on the same events"),
    "engine": ("bench.engine", "end-to-end latency and sustained rate of the engine subprocess "
                               "vs a bare ZeroMQ relay"),
    "audit": ("bench.audit", "Arrow audit rows/s for the engine's schema by batch size, fsync "
                             "on and off"),
    "memory": ("bench.memory", "peak RSS and table sizes with a 10M-row manifest compiled"),
    "replay": ("bench.replay", "what-if replay of a 100M-scan audit history from disk: one "
                               "process, a local Dask cluster, DuckDB SQL"),
    "plc": ("bench.plc", "the PLC gateway per protocol (TCP telegrams, OPC UA, Modbus): "
                         "decisions/s with confirmations back, latency added over a direct read"),
}
ROOT = Path(__file__).resolve().parents[1]
README = Path(__file__).resolve().with_name("README.md")
PLOTS_DIR = Path(__file__).resolve().with_name("plots")

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
    g.add_argument("--plot", metavar="PATH", type=Path,
                   help="draw PNG plots of the result: PATH is a directory (created) unless "
                        "its last part ends with '-', '_' or '.', then a file-name prefix")
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
    """Where a result was measured: interpreter, platform, CPUs, memory, library versions."""
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
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            mem_total = next((int(line.split()[1]) * 1024 for line in f
                              if line.startswith("MemTotal:")), None)
    except (OSError, ValueError):
        pass
    try:
        import zmq
        libzmq = zmq.zmq_version()
    except ImportError:                                      # pragma: no cover
        libzmq = None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_total_bytes": mem_total,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": version("numpy"),
        "pyarrow": version("pyarrow"),
        "Cython": version("Cython"),
        "pyzmq": version("pyzmq"),
        "libzmq": libzmq,
        "duckdb": version("duckdb"),
        "hdrhistogram": version("hdrhistogram"),
        "matplotlib": version("matplotlib"),
        "pytest-benchmark": version("pytest-benchmark"),
        "sorter": version("sorter"),
    }


def write_json(path: Path, result: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x):
    """numpy scalars and paths in results."""
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# --------------------------------------------------------------------------------------------
# one suite


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_suite(name: str, args: argparse.Namespace) -> dict:
    """Run one suite with parsed args; the result with suite, started_at and wall_s. A suite
    that raises gives `ok: false` and the traceback (so that a run of every suite goes on)."""
    module = importlib.import_module(SUITES[name][0])
    started = time.time()
    result = {"suite": name, "started_at": _now()}
    try:
        result.update(module.run(args))
    except Exception as e:                              # noqa: BLE001 - reported, run goes on
        result.update(ok=False, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc())
    result["wall_s"] = round(time.time() - started, 3)
    return result


def _print_report(name: str, result: dict) -> None:
    """The suite's own summary (skipped when the suite raised: nothing to summarise)."""
    module = importlib.import_module(SUITES[name][0])
    if hasattr(module, "report") and "traceback" not in result:
        try:
            print(module.report(result), flush=True)
        except Exception as e:                          # noqa: BLE001 - a partial result
            print(f"bench {name}: no report ({type(e).__name__}: {e})", flush=True)


def _plot(results: dict, where: Path) -> list[str]:
    from bench import plots
    return [str(p) for p in plots.draw(results, where)]


def main_suite(argv: list[str], selected: str) -> int:
    args = build_parser(selected).parse_args(argv)
    result = run_suite(args.suite, args)
    if args.plot is not None:
        try:
            result["plots"] = _plot({args.suite: result}, args.plot)
        except Exception as e:                          # noqa: BLE001
            result["plots_error"] = f"{type(e).__name__}: {e}"
    if args.json is not None:
        write_json(args.json, result)
    _print_report(args.suite, result)
    for path in result.get("plots", []):
        print(f"wrote {path}")
    if args.json is not None:
        print(f"wrote {args.json}")
    if not result.get("ok", True):
        print(f"bench {args.suite}: FAILED: {result.get('error', 'see the JSON')}",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# every suite


def build_all_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", parents=[_common()],
        description="Benchmarks of the sorting engine. Without SUITE every suite runs in turn "
                    "(" + ", ".join(SUITES) + "); `python -m bench SUITE --help` for one.",
        epilog="suites: " + "; ".join(f"{k}: {v[1]}" for k, v in SUITES.items()))
    g = parser.add_argument_group("run of every suite")
    g.add_argument("--suites", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   metavar="LIST", help="comma-separated subset, in this order (default: all)")
    readme = g.add_mutually_exclusive_group()
    readme.add_argument("--update-readme", action="store_true",
                        help="rewrite the figures table (and plots) of bench/README.md from "
                             "this run (default: only after a full run of every suite)")
    readme.add_argument("--no-readme", action="store_true",
                        help="never touch bench/README.md")
    g.add_argument("--from", dest="from_json", type=Path, metavar="JSON",
                   help="measure nothing: load the results of an earlier run of every suite "
                        "and redo the table, plots and README from them")
    return parser


def _suite_args(name: str, quick: bool, seed: int) -> argparse.Namespace:
    argv = [name, "--seed", str(seed)] + (["--quick"] if quick else [])
    return build_parser(name).parse_args(argv)


def run_all(args: argparse.Namespace) -> dict:
    names = args.suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"python -m bench: unknown suite(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(SUITES)}")
    started = time.time()
    out = {"suite": "all", "started_at": _now(), "quick": bool(args.quick), "seed": args.seed,
           "suites_run": names, "machine": machine_info(), "suites": {}}
    for name in names:
        print(f"== bench {name} ==", flush=True)
        result = run_suite(name, _suite_args(name, args.quick, args.seed))
        out["suites"][name] = result
        _print_report(name, result)
        if not result.get("ok", True):
            print(f"bench {name}: FAILED: {result.get('error', 'see the JSON')}", flush=True)
        print(f"   ({name}: {result['wall_s']:.1f} s)\n", flush=True)
    out["wall_s"] = round(time.time() - started, 3)
    out["suite_wall_s"] = {k: v.get("wall_s") for k, v in out["suites"].items()}
    out["ok"] = all(r.get("ok", True) for r in out["suites"].values())
    return out


def main_all(argv: list[str]) -> int:
    args = build_all_parser().parse_args(argv)
    from bench import figures

    if args.from_json is not None:
        out = json.loads(Path(args.from_json).read_text())
        if out.get("suite") != "all":
            raise SystemExit(f"{args.from_json}: not the JSON of a run of every suite")
    else:
        out = run_all(args)
    out["figures"] = figures.rows(out)
    plots_written: list[str] = []
    full = (not out.get("quick") and set(out.get("suites_run", [])) == set(SUITES)
            and args.suites is None)
    readme = args.update_readme or (full and not args.no_readme and args.from_json is None)
    targets = [args.plot] if args.plot is not None else []
    if readme and (args.plot is None or Path(args.plot).resolve() != PLOTS_DIR):
        targets.append(PLOTS_DIR)                   # the README shows bench/plots/*.png
    for where in targets:
        try:
            plots_written += _plot(out["suites"], where)
        except Exception as e:                      # noqa: BLE001 - the figures still count
            out.setdefault("problems", []).append(f"plots: {type(e).__name__}: {e}")
            print(f"bench: plots failed: {type(e).__name__}: {e}", file=sys.stderr)
    if plots_written:
        out["plots"] = plots_written
    if args.json is not None and args.from_json is None:
        write_json(args.json, out)
    print(figures.text_table(out))
    if readme:
        figures.update_readme(README, out, Path(args.json) if args.json else args.from_json)
        print(f"updated {README}")
    for path in plots_written:
        print(f"wrote {path}")
    if args.json is not None and args.from_json is None:
        print(f"wrote {args.json}")
    if not out.get("ok", True):
        failed = [k for k, v in out["suites"].items() if not v.get("ok", True)]
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


_ALL_VALUED = {"--json", "--plot", "--seed", "--suites", "--from"}


def _selected_suite(argv: list[str]) -> str | None:
    """The suite named on the command line (the first positional word that is not the value
    of a valued option), or None for a run of every suite."""
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token.startswith("-"):
            skip = token in _ALL_VALUED
            continue
        return token
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected_suite(argv)
    if selected is None:
        return main_all(argv)
    return main_suite(argv, selected)
