"""`sorter route`: scan lines in, JSON decisions out, bad lines reported and skipped."""
import json
import subprocess
import sys
from pathlib import Path

from sorter.cli import main
from sorter.plan import load_plan
from sorter.core.reference import ReferenceRouter
from sorter.core.events import EventBatch

SAMPLE = Path(__file__).parent.parent / "sorter" / "plan" / "data" / "sample_scans.tsv"


def run(capsys, *argv):
    code = main(["route", *argv])
    out, err = capsys.readouterr()
    return code, [json.loads(l) for l in out.splitlines()], err


def test_sample_file_routes_like_the_reference(capsys):
    code, rows, err = run(capsys, str(SAMPLE))
    assert code == 0 and err == ""
    lines = [l for l in SAMPLE.read_text().splitlines() if l and not l.startswith("#")]
    assert [r["parcel_id"] for r in rows] == [l.split("\t")[0] for l in lines]
    reads = [[f.replace("<GS>", "\x1d").encode() for f in l.split("\t")[1:]] for l in lines]
    ref = ReferenceRouter(load_plan())
    want = ref.route(EventBatch.from_reads(reads))
    assert [(r["chute"], r["reason"]) for r in rows] == [(c, n) for c, n, _ in want.as_tuples()]
    assert [r["destination"] for r in rows] == [ref.destination_name(d) for d in want.destination.tolist()]
    # every reason the sample is there to show
    assert {r["reason"] for r in rows} >= {"sorted", "no_read", "invalid", "conflict",
                                          "unknown_destination"}
    ems = next(r for r in rows if r["destination"] == "EMS")
    assert ems["reads"][0]["kind"] == "s10" and ems["reads"][0]["service"].startswith("E")
    assert all(r["plan_version"] == "2026.11.1" for r in rows)


def test_bad_lines_are_named_and_the_rest_still_route(tmp_path, capsys):
    f = tmp_path / "scans.tsv"
    f.write_bytes(b"1\t050010\n\t050010\n\xff\xfe\t050010\n2\t]C1421643101000\n3\n")
    code, rows, err = run(capsys, str(f))
    assert code == 1
    assert [r["parcel_id"] for r in rows] == ["1", "2", "3"]
    assert [r["line"] for r in rows] == [1, 4, 5]
    assert f"{f}:2: parcel_id: is empty" in err
    assert f"{f}:3: parcel_id: is not UTF-8" in err
    assert rows[2]["reason"] == "no_read"


def test_gs_escapes_and_chute_states(tmp_path, capsys):
    f = tmp_path / "scans.tsv"
    f.write_text("a\t]C1420050010<GS>10ABC\nb\t]C1420050010\\x1d10ABC\nc\t050010\n")
    code, rows, _ = run(capsys, str(f), "--full", "5", "--disabled", "6")
    assert code == 0
    assert rows[0]["reads"][0]["postcode"] == rows[1]["reads"][0]["postcode"] == "050010"
    # ALMATY_CITY's chutes 5 and 6 are unavailable: recirculate, no divert
    assert [(r["chute"], r["reason"], r["destination"]) for r in rows] == \
        [(0, "recirculate", "ALMATY_CITY")] * 3


def test_stdin_through_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "sorter.cli", "route"], input=b"p1\tZ01P3K4\n",
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert (row["parcel_id"], row["reason"], row["destination"]) == ("p1", "sorted", "ASTANA")


def test_missing_file_is_an_error(tmp_path, capsys):
    code, rows, err = run(capsys, str(tmp_path / "nope.tsv"))
    assert code == 1 and rows == [] and "cannot read" in err
