"""Plan loading and validation (sorter.plan) and the `sorter plan` command (sorter.cli)."""
from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from sorter.plan import checks as plan_mod
from sorter.cli import build_parser, main
from sorter.plan import (DEFAULT_PLAN, MANIFEST_PROBLEM_LIMIT, Destination, Plan, PlanError,
                         Problem, load_plan, summary, validate)

REPO = Path(__file__).resolve().parents[1]

BASE = """\
[plan]
name = "Test hub"
version = "1"
home_country = "KZ"
chutes = ["1-10"]

[special]
no_read = 9
invalid = 9
conflict = 10
unknown_destination = 10
overflow = 10

[destinations.ALMATY]
chutes = [1, 2]

[destinations.ASTANA]
chutes = [3]
policy = "round_robin"

[rules.postcode]
"05" = "ALMATY"
"01" = "ASTANA"

[rules.country]
KZ = "ALMATY"

[rules.service]
E = "ASTANA"
"""

MANIFEST_HEADER = "item_id,postcode,country\n"
L05 = BASE.splitlines().index('"05" = "ALMATY"') + 1     # line of the "05" rule in BASE


def s10(serial: str, service: str = "RR", origin: str = "KZ") -> str:
    """A valid S10 id for an 8-digit serial (check digit computed independently here)."""
    s = sum(int(d) * w for d, w in zip(serial, (8, 6, 4, 2, 3, 5, 9, 7)))
    c = 11 - s % 11
    c = {10: 0, 11: 5}.get(c, c)
    return f"{service}{serial}{c}{origin}"


def sscc(data17: str) -> str:
    s = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(data17)))
    return data17 + str((10 - s % 10) % 10)


def write(tmp_path: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    p = tmp_path / "plan.toml"
    p.write_text(toml, encoding="utf-8")
    return p


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(PlanError) as e:
        load_plan(path)
    return e.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def with_files(text: str = BASE, **files: str) -> str:
    keys = "\n".join(f'{k} = "{v}"' for k, v in files.items())
    return text + "\n[files]\n" + keys + "\n"


# ---------------------------------------------------------------------------------------------
# The bundled plan


def test_bundled_plan_loads_cleanly():
    plan = load_plan()
    assert plan.source == str(DEFAULT_PLAN)
    assert validate(plan) == []
    assert load_plan(DEFAULT_PLAN).postcode_rules == plan.postcode_rules
    assert plan.home_country == "KZ"
    assert set(plan.special) == {"no_read", "invalid", "conflict", "unknown_destination",
                                 "overflow"}


def test_bundled_summary_matches_files():
    data = DEFAULT_PLAN.parent
    doc = tomllib.loads(DEFAULT_PLAN.read_text())
    with open(data / doc["files"]["postcode_prefixes"], newline="") as f:
        csv_prefixes = [r["prefix"] for r in csv.DictReader(f)]
    with open(data / doc["files"]["manifest"], newline="") as f:
        manifest_rows = list(csv.DictReader(f))
    lo, hi = map(int, doc["plan"]["chutes"][0].split("-"))

    s = summary(load_plan())
    assert s["name"] == doc["plan"]["name"] and s["version"] == doc["plan"]["version"]
    assert s["home_country"] == "KZ"
    assert s["counts"] == {
        "chutes": hi - lo + 1,
        "destinations": len(doc["destinations"]),
        "postcode_rules": len(doc["rules"]["postcode"]) + len(csv_prefixes),
        "country_rules": len(doc["rules"]["country"]),
        "service_rules": len(doc["rules"]["service"]),
        "manifest_rows": len(manifest_rows),
    }
    assert s["recirculation_limit"] == doc["plan"]["recirculation_limit"]
    assert s["special"] == doc["special"]
    json.dumps(s)   # JSON-friendly


def test_bundled_plan_content_is_realistic():
    plan = load_plan()
    assert 70 <= len(plan.chutes) <= 90
    names = {d.name for d in plan.destinations}
    for region in ("ASTANA", "ALMATY_CITY", "ALMATY_REGION", "AKMOLA", "AKTOBE", "ATYRAU",
                   "EAST_KAZAKHSTAN", "ZHAMBYL", "WEST_KAZAKHSTAN", "KARAGANDA", "KYZYLORDA",
                   "KOSTANAY", "MANGYSTAU", "PAVLODAR", "NORTH_KAZAKHSTAN", "TURKISTAN",
                   "SHYMKENT", "EMS", "DOMESTIC_MANUAL"):
        assert region in names
    assert all(1 <= len(d.chutes) <= 4 for d in plan.destinations)
    assert {d.policy for d in plan.destinations} == {"fill_first", "round_robin"}
    for letter in "ABCDEFHLMNPRSTXZ":
        assert letter in plan.postcode_rules
    assert plan.postcode_rules["05"] == "ALMATY_CITY" and plan.postcode_rules["Z"] == "ASTANA"
    assert plan.service_rules == {"E": "EMS"}
    assert plan.country_rules["KZ"] == "DOMESTIC_MANUAL"
    assert {plan.country_rules[c] for c in ("RU", "CN", "DE", "US")} >= {
        "INTL_CIS", "INTL_ASIA", "INTL_EUROPE", "INTL_AMERICAS"}
    m = plan.manifest
    assert m.schema == pa.schema([("item_id", pa.string()), ("postcode", pa.string()),
                                  ("country", pa.string())])
    ids = m.column("item_id").to_pylist()
    assert len(set(ids)) == len(ids) >= 150
    s10s = [i for i in ids if not i[0].isdigit()]
    assert {i[0] for i in s10s} >= set("RCHELV") and {i[-2:] for i in s10s} >= {"KZ", "CN", "RU"}
    assert any(len(i) == 18 for i in ids)
    assert all(" " not in p for p in m.column("postcode").drop_null().to_pylist())


# ---------------------------------------------------------------------------------------------
# Problem and PlanError


def test_problem_str_and_plan_error():
    assert str(Problem("a.toml", 3, "plan.name", "bad")) == "a.toml:3: plan.name: bad"
    assert str(Problem("<plan>", None, "plan.name", "bad")) == "<plan>: plan.name: bad"
    e = PlanError([Problem("a.toml", 3, "x", "m"), Problem("b.csv", 2, "prefix", "n")])
    assert len(e.problems) == 2
    assert "a.toml:3: x: m" in str(e) and "b.csv:2: prefix: n" in str(e)


def test_missing_plan_file(tmp_path):
    p = only(problems_of(tmp_path / "nope.toml"))
    assert p.file.endswith("nope.toml") and p.line is None


# ---------------------------------------------------------------------------------------------
# One test per kind of problem


def test_base_plan_is_valid(tmp_path):
    plan = load_plan(write(tmp_path, BASE))
    assert plan.chutes == tuple(range(1, 11))
    assert [d.name for d in plan.destinations] == ["ALMATY", "ASTANA"]
    assert plan.destinations[1] == Destination("ASTANA", (3,), "round_robin")
    assert plan.destinations[0].policy == "fill_first"
    assert plan.recirculation_limit == 3 and plan.manifest is None


def test_toml_syntax_error(tmp_path):
    text = BASE + "oops = \n"
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("syntax", len(text.splitlines()))
    assert p.file.endswith("plan.toml")


@pytest.mark.parametrize("key", ["name", "version", "home_country", "chutes"])
def test_missing_required_key(tmp_path, key):
    head, rest = BASE.split("[special]")
    text = "\n".join(l for l in head.splitlines() if not l.startswith(f"{key} =")) + \
        "\n[special]" + rest
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == (f"plan.{key}", 1)       # the [plan] header
    assert "missing" in p.message


def test_missing_plan_table(tmp_path):
    text = "[special]" + BASE.split("[special]")[1]
    p = only(problems_of(write(tmp_path, text)))      # one problem, not one per missing key
    assert (p.field, p.line) == ("plan", None) and "missing [plan]" in p.message


def test_plan_chutes_not_an_array(tmp_path):
    text = edit('chutes = ["1-10"]', 'chutes = "1-10"')
    p = only(problems_of(write(tmp_path, text)))      # no "not declared" noise for each chute
    assert (p.field, p.line) == ("plan.chutes", 5) and "array" in p.message


def test_ill_typed_key(tmp_path):
    text = edit('version = "1"', "version = 1.5")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("plan.version", line_of(text, "version ="))
    assert "string" in p.message


def test_ill_typed_rule_value(tmp_path):
    text = edit('E = "ASTANA"', "E = 3")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("rules.service.E", line_of(text, "E = 3"))
    assert "string" in p.message


def test_unknown_rules_table(tmp_path):
    text = BASE + '\n[rules.extra]\nH = "ALMATY"\n'
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("rules.extra", line_of(text, "[rules.extra]"))
    assert "unknown key" in p.message


def test_unknown_key_typo(tmp_path):
    text = edit('policy = "round_robin"', 'polcy = "round_robin"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ASTANA.polcy", line_of(text, "polcy"))
    assert "did you mean 'policy'" in p.message


def test_unknown_top_level_table(tmp_path):
    text = BASE + "\n[rule.postcode]\nA = \"ALMATY\"\n"
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("rule", line_of(text, "[rule.postcode]"))
    assert "did you mean 'rules'" in p.message


def test_chute_out_of_range_in_plan_chutes(tmp_path):
    text = edit('chutes = ["1-10"]', 'chutes = ["1-10", 70000]')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("plan.chutes", line_of(text, "70000"))
    assert "70000" in p.message and "65535" in p.message


def test_chute_out_of_range_in_destination(tmp_path):
    text = edit("chutes = [1, 2]", "chutes = [1, 2, 0]")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ALMATY.chutes", line_of(text, "[1, 2, 0]"))
    assert "chute 0 outside" in p.message


@pytest.mark.parametrize("spec,fragment", [
    ('"12-11"', "backwards"),
    ('"5-70000"', "outside"),
    ('"five"', "not a chute number"),
    ("true", "not a chute number"),
])
def test_bad_chute_range(tmp_path, spec, fragment):
    text = edit('chutes = ["1-10"]', f'chutes = ["1-10", {spec}]')
    ps = problems_of(write(tmp_path, text))
    p = ps[0]
    assert (p.field, p.line) == ("plan.chutes", 5) and fragment in p.message
    if spec != '"5-70000"':
        assert len(ps) == 1, ps
    else:   # 5-10 now declared twice, reported too
        assert all(x.field == "plan.chutes" for x in ps)


def test_chute_declared_twice(tmp_path):
    text = edit('chutes = ["1-10"]', 'chutes = ["1-10", "8-9"]')
    p = only(problems_of(write(tmp_path, text)))
    assert p.field == "plan.chutes" and "8-9 declared more than once" in p.message


def test_chute_not_declared(tmp_path):
    text = edit("chutes = [3]", "chutes = [3, 11]")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ASTANA.chutes", line_of(text, "[3, 11]"))
    assert "chute 11 not declared" in p.message


def test_special_names_unknown_chute(tmp_path):
    text = edit("conflict = 10", "conflict = 11")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("special.conflict", line_of(text, "conflict = 11"))
    assert "not declared" in p.message


def test_special_ill_typed(tmp_path):
    text = edit("conflict = 10", 'conflict = "10"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("special.conflict", line_of(text, "conflict ="))


def test_chute_in_two_destination_groups(tmp_path):
    text = edit("chutes = [3]", "chutes = [2, 3]")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ASTANA.chutes", line_of(text, "[2, 3]"))
    assert "chute 2" in p.message and "ALMATY" in p.message
    assert f"line {line_of(text, '[1, 2]')}" in p.message


def test_chute_twice_in_one_group(tmp_path):
    text = edit("chutes = [1, 2]", "chutes = [1, 2, 1]")
    p = only(problems_of(write(tmp_path, text)))
    assert p.field == "destinations.ALMATY.chutes" and "more than once" in p.message


def test_special_chute_also_in_destination_group(tmp_path):
    text = edit("overflow = 10", "overflow = 3")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("special.overflow", line_of(text, "overflow = 3"))
    assert "ASTANA" in p.message


def test_empty_chute_group(tmp_path):
    text = edit("chutes = [3]", "chutes = []")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ASTANA.chutes", line_of(text, "chutes = []"))
    assert "empty" in p.message


def test_missing_destination_chutes(tmp_path):
    text = edit("chutes = [3]\n", "")
    p = only(problems_of(write(tmp_path, text)))
    assert p.field == "destinations.ASTANA.chutes"
    assert p.line == line_of(text, "[destinations.ASTANA]")


def test_unknown_policy(tmp_path):
    text = edit('policy = "round_robin"', 'policy = "random"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("destinations.ASTANA.policy", line_of(text, "random"))
    assert "fill_first" in p.message


def test_bad_destination_name(tmp_path):
    text = BASE + '\n[destinations."Almaty city"]\nchutes = [4]\n'
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ('destinations."Almaty city"', line_of(text, "Almaty city"))


@pytest.mark.parametrize("old,new,field", [
    ('"01" = "ASTANA"', '"01" = "ASTANNA"', "rules.postcode.01"),
    ('KZ = "ALMATY"', 'KZ = "ALMATI"', "rules.country.KZ"),
    ('E = "ASTANA"', 'E = "EMS"', "rules.service.E"),
])
def test_rule_names_unknown_destination(tmp_path, old, new, field):
    text = edit(old, new)
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == (field, line_of(text, new))
    assert "unknown destination" in p.message


def test_csv_rule_names_unknown_destination(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    csv_text = "prefix,destination\nA,ALMATY\nB,NOPE\n"
    p = only(problems_of(write(tmp_path, text, {"p.csv": csv_text})))
    assert (p.file, p.line, p.field) == (str(tmp_path / "p.csv"), 3, "destination")


@pytest.mark.parametrize("reason", ["no_read", "invalid", "conflict", "unknown_destination",
                                    "overflow"])
def test_special_chute_missing(tmp_path, reason):
    text = "\n".join(l for l in BASE.splitlines() if not l.startswith(f"{reason} =")) + "\n"
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == (f"special.{reason}", line_of(text, "[special]"))
    assert "missing" in p.message


def test_unknown_special_reason(tmp_path):
    text = edit("overflow = 10", "overflow = 10\nno_reads = 9")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("special.no_reads", line_of(text, "no_reads"))
    assert "did you mean 'no_read'" in p.message


def test_duplicate_prefix_after_removing_spaces(tmp_path):
    text = edit('"01" = "ASTANA"', '"01" = "ASTANA"\n"0 5" = "ASTANA"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ('rules.postcode."0 5"', line_of(text, '"0 5"'))
    assert "'05'" in p.message and f":{L05}" in p.message


def test_duplicate_prefix_toml_vs_csv(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    csv_text = "prefix,destination\nA,ALMATY\n05,ASTANA\n"
    p = only(problems_of(write(tmp_path, text, {"p.csv": csv_text})))
    assert (p.file, p.line, p.field) == (str(tmp_path / "p.csv"), 3, "prefix")
    assert f"plan.toml:{L05}" in p.message


def test_duplicate_prefix_within_csv(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    csv_text = "prefix,destination,note\nA10,ALMATY,x\nZ,ASTANA,y\nA1 0,ASTANA,again\n"
    p = only(problems_of(write(tmp_path, text, {"p.csv": csv_text})))
    assert (p.line, p.field) == (4, "prefix") and "p.csv:2" in p.message


@pytest.mark.parametrize("prefix", ["a", "05-", "Ä"])
def test_bad_prefix_characters(tmp_path, prefix):
    text = edit('"01" = "ASTANA"', f'"01" = "ASTANA"\n"{prefix}" = "ASTANA"')
    p = only(problems_of(write(tmp_path, text)))
    assert p.line == line_of(text, f'"{prefix}"') and "[0-9A-Z]+" in p.message


def test_shadowed_prefix_in_toml(tmp_path):
    text = edit('"01" = "ASTANA"', '"01" = "ASTANA"\n"0501" = "ALMATY"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("rules.postcode.0501", line_of(text, '"0501"'))
    assert "'0501'" in p.message and "'05'" in p.message
    assert f"plan.toml:{L05}" in p.message


def test_shadowed_prefix_uses_longest_shorter_prefix(tmp_path):
    # 0501 -> ASTANA overrides 05; 05012 -> ASTANA repeats 0501: shadowed; 0502 -> ASTANA is fine
    text = with_files(postcode_prefixes="p.csv")
    csv_text = "prefix,destination\n0501,ASTANA\n0502,ASTANA\n05012,ASTANA\n050123,ALMATY\n"
    p = only(problems_of(write(tmp_path, text, {"p.csv": csv_text})))
    assert (p.line, p.field) == (4, "prefix")
    assert "'05012'" in p.message and "'0501'" in p.message and "p.csv:2" in p.message


def test_shadowed_prefix_csv_vs_toml(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    p = only(problems_of(write(tmp_path, text, {"p.csv": "prefix,destination\n0101,ASTANA\n"})))
    assert (p.file, p.line, p.field) == (str(tmp_path / "p.csv"), 2, "prefix")
    assert "'01'" in p.message and "plan.toml" in p.message


@pytest.mark.parametrize("code", ["XX", "ru", "RUS", "1"])
def test_country_not_alpha2(tmp_path, code):
    text = edit('KZ = "ALMATY"', f'KZ = "ALMATY"\n"{code}" = "ASTANA"')
    p = only(problems_of(write(tmp_path, text)))
    assert p.line == line_of(text, f'"{code}" =') and "alpha-2" in p.message
    assert p.field.startswith("rules.country.")


def test_home_country_not_alpha2(tmp_path):
    text = edit('home_country = "KZ"', 'home_country = "KAZ"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("plan.home_country", 4)


@pytest.mark.parametrize("key,fragment", [
    ("EEE", "1 or 2 upper-case"), ("e", "1 or 2 upper-case"), ("1", "1 or 2 upper-case"),
    ("S", "reserved"), ("JA", "reserved"), ("W", "reserved"),
])
def test_bad_service_key(tmp_path, key, fragment):
    text = edit('E = "ASTANA"', f'E = "ASTANA"\n"{key}" = "ALMATY"')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == (f"rules.service.{key}", line_of(text, f'"{key}" ='))
    assert fragment in p.message


@pytest.mark.parametrize("value", ["256", "-1", '"3"', "2.5", "true"])
def test_bad_recirculation_limit(tmp_path, value):
    text = edit('home_country = "KZ"', f'home_country = "KZ"\nrecirculation_limit = {value}')
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("plan.recirculation_limit", 5)
    assert "0..255" in p.message


@pytest.mark.parametrize("value", [0, 255])
def test_recirculation_limit_bounds_ok(tmp_path, value):
    text = edit('home_country = "KZ"', f'home_country = "KZ"\nrecirculation_limit = {value}')
    assert load_plan(write(tmp_path, text)).recirculation_limit == value


def test_missing_referenced_file(tmp_path):
    text = with_files(postcode_prefixes="missing.csv")
    p = only(problems_of(write(tmp_path, text)))
    assert (p.field, p.line) == ("files.postcode_prefixes", line_of(text, "missing.csv"))


def test_prefix_csv_bad_header(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    p = only(problems_of(write(tmp_path, text, {"p.csv": "prefix,dest\nA,ALMATY\n"})))
    assert (p.line, p.field) == (1, "destination")


def test_prefix_csv_rows_add_rules(tmp_path):
    text = with_files(postcode_prefixes="p.csv")
    csv_text = "\ufeffprefix,destination,note\nA 05,ASTANA,district\n\nZ,ASTANA,\n"
    plan = load_plan(write(tmp_path, text, {"p.csv": csv_text}))
    assert plan.postcode_rules == {"05": "ALMATY", "01": "ASTANA", "A05": "ASTANA", "Z": "ASTANA"}


# ---------------------------------------------------------------------------------------------
# Every problem at once


def test_three_errors_are_all_reported(tmp_path):
    text = edit('policy = "round_robin"', 'polcy = "round_robin"')
    text = edit("conflict = 10", "conflict = 99", text)
    text = edit('KZ = "ALMATY"', 'KZ = "NOWHERE"', text)
    ps = problems_of(write(tmp_path, text))
    assert [(p.field, p.line) for p in ps] == [
        ("special.conflict", line_of(text, "conflict = 99")),
        ("destinations.ASTANA.polcy", line_of(text, "polcy")),
        ("rules.country.KZ", line_of(text, "NOWHERE")),
    ]


def test_problems_across_files_sorted_plan_first(tmp_path):
    text = with_files(edit('E = "ASTANA"', 'E = "X"'), postcode_prefixes="p.csv",
                      manifest="m.csv")
    files = {"p.csv": "prefix,destination\nQ,NOPE\n",
             "m.csv": MANIFEST_HEADER + f"{s10('12345678')},,\n"}
    ps = problems_of(write(tmp_path, text, files))
    assert [(Path(p.file).name, p.line) for p in ps] == [
        ("plan.toml", line_of(text, 'E = "X"')), ("p.csv", 2), ("m.csv", 2)]


# ---------------------------------------------------------------------------------------------
# Manifest


def manifest_plan(tmp_path: Path, body: str, name: str = "m.csv") -> Path:
    return write(tmp_path, with_files(manifest=name), {name: MANIFEST_HEADER + body})


def test_manifest_csv_loads_and_normalises(tmp_path):
    a, b, c = s10("47312482", "RR", "GB"), sscc("10614141234567890"), s10("00000000", "EE", "CN")
    plan = load_plan(manifest_plan(tmp_path, f"{a},A05 K8X7,KZ\n{b},050010,\n\n{c},,RU\n"))
    assert a == "RR473124829GB" and b == "106141412345678908"
    m = plan.manifest
    assert m.column_names == ["item_id", "postcode", "country"]
    assert all(t == pa.string() for t in m.schema.types)
    assert m.to_pydict() == {"item_id": [a, b, c], "postcode": ["A05K8X7", "050010", None],
                             "country": ["KZ", None, "RU"]}
    assert summary(plan)["counts"]["manifest_rows"] == 3


def test_manifest_optional_columns_and_extra_columns(tmp_path):
    p = write(tmp_path, with_files(manifest="m.csv"),
              {"m.csv": f"weight,item_id,country\n1.5,{s10('11111111')},KZ\n"})
    m = load_plan(p).manifest
    assert m.to_pydict() == {"item_id": [s10("11111111")], "postcode": [None], "country": ["KZ"]}


@pytest.mark.parametrize("item_id,fragment", [
    ("RR473124828GB", "check digit is 8, expected 9"),
    ("KA473124829GB", "reserved"),
    ("RR47312482GB", "12 characters"),
    ("rr473124829GB", "upper case"),
    ("106141412345678907", "SSCC check digit"),
    ("00106141412345678908", "drop the leading AI 00"),
    ("#12", "nor an SSCC"),
])
def test_manifest_bad_item_id(tmp_path, item_id, fragment):
    body = f"{s10('12345678')},050000,\n{item_id},050000,\n"
    p = only(problems_of(manifest_plan(tmp_path, body)))
    assert (p.file, p.line, p.field) == (str(tmp_path / "m.csv"), 3, "item_id")
    assert fragment in p.message


def test_manifest_duplicate_item_id(tmp_path):
    a, b = s10("12345678"), sscc("00000000000000001")
    body = f"{a},050000,\n{b},050000,\n{a},010000,\n{b},,KZ\n"
    ps = problems_of(manifest_plan(tmp_path, body))
    assert [(p.line, p.field) for p in ps] == [(4, "item_id"), (5, "item_id")]
    assert "first at line 2" in ps[0].message and "first at line 3" in ps[1].message


def test_manifest_row_without_address(tmp_path):
    body = f"{s10('12345678')},050000,\n{s10('12345679')}, ,\n"
    p = only(problems_of(manifest_plan(tmp_path, body)))
    assert (p.line, p.field) == (3, "postcode") and "neither postcode nor country" in p.message


@pytest.mark.parametrize("country", ["XX", "kz", "KAZ"])
def test_manifest_bad_country(tmp_path, country):
    body = f"{s10('12345678')},,{country}\n"
    p = only(problems_of(manifest_plan(tmp_path, body)))
    assert (p.line, p.field) == (2, "country") and repr(country) in p.message


def test_manifest_missing_item_id_and_malformed_rows_keep_line_numbers(tmp_path):
    body = (f"{s10('00000001')},050000,\n"       # 2
            "\n"                                   # 3 blank: skipped
            f",050000,KZ\n"                        # 4 no item_id
            f"{s10('00000002')},050000,KZ,extra\n"  # 5 malformed
            f"{s10('00000003')},050000,XX\n")      # 6 bad country
    ps = problems_of(manifest_plan(tmp_path, body))
    assert [(p.line, p.field) for p in ps] == [(4, "item_id"), (5, "manifest"), (6, "country")]


def test_manifest_csv_without_item_id_column(tmp_path):
    p = write(tmp_path, with_files(manifest="m.csv"), {"m.csv": "id,postcode\nX,050000\n"})
    pr = only(problems_of(p))
    assert (pr.line, pr.field) == (1, "item_id")


def test_manifest_problems_are_capped(tmp_path):
    body = "".join(f"RR{i:08d}0KZ,,\n" for i in range(500))   # mostly bad ids, all no address
    ps = problems_of(manifest_plan(tmp_path, body))
    assert len(ps) == MANIFEST_PROBLEM_LIMIT + 1
    assert all(p.line is not None for p in ps[:-1])
    last = ps[-1]
    assert last.field == "manifest" and last.line is None
    n_bad_ids = sum(plan_mod._s10_problem(f"RR{i:08d}0KZ") is not None for i in range(500))
    total = n_bad_ids + 500
    assert f"and {total - MANIFEST_PROBLEM_LIMIT} more" in last.message


def _manifest_table(ids, postcodes, countries) -> pa.Table:
    return pa.table({"item_id": pa.array(ids, pa.string()),
                     "postcode": pa.array(postcodes, pa.string()),
                     "country": pa.array(countries, pa.string())})


def test_arrow_manifest_loads(tmp_path):
    ids = [s10(f"{i:08d}") for i in range(100)] + [sscc(f"{i:017d}") for i in range(20)]
    t = _manifest_table(ids, ["050 000"] * 60 + [""] * 60, [None] * 60 + ["RU"] * 60)
    with ipc.new_file(str(tmp_path / "m.arrow"), t.schema) as w:
        w.write_table(t, max_chunksize=7)       # several record batches
    plan = load_plan(write(tmp_path, with_files(manifest="m.arrow")))
    m = plan.manifest
    assert m.num_rows == 120 and m.column("item_id").to_pylist() == ids
    assert m.column("postcode").to_pylist() == ["050000"] * 60 + [None] * 60


def test_parquet_manifest_loads(tmp_path):
    ids = [s10(f"{i:08d}", "CP", "DE") for i in range(50)]
    t = _manifest_table(ids, ["A05 K8X7"] * 50, ["KZ"] * 50)
    pq.write_table(t.cast(pa.schema([("item_id", pa.large_string()), ("postcode", pa.string()),
                                     ("country", pa.string())])), tmp_path / "m.parquet",
                   row_group_size=16)
    plan = load_plan(write(tmp_path, with_files(manifest="m.parquet")))
    assert plan.manifest.schema.field("item_id").type == pa.string()
    assert plan.manifest.column("postcode").to_pylist() == ["A05K8X7"] * 50


def test_parquet_manifest_problems_name_rows(tmp_path):
    ids = [s10("00000001"), "RR000000011KZ", s10("00000001")]
    pq.write_table(_manifest_table(ids, ["050000"] * 3, [None] * 3), tmp_path / "m.parquet")
    ps = problems_of(write(tmp_path, with_files(manifest="m.parquet")))
    assert [(p.line, p.field) for p in ps] == [(None, "item_id"), (None, "item_id")]
    assert ps[0].message.startswith("row 2:") and ps[1].message.startswith("row 3:")
    assert "first at row 1" in ps[1].message


def test_parquet_manifest_with_integer_ids_is_rejected(tmp_path):
    pq.write_table(pa.table({"item_id": [106141412345678908], "postcode": ["050000"],
                             "country": [None]}), tmp_path / "m.parquet")
    p = only(problems_of(write(tmp_path, with_files(manifest="m.parquet"))))
    assert p.field == "item_id" and "strings" in p.message


def test_unknown_manifest_format(tmp_path):
    (tmp_path / "m.xlsx").write_text("x")
    p = only(problems_of(write(tmp_path, with_files(manifest="m.xlsx"))))
    assert p.field == "manifest" and ".parquet" in p.message


def test_vectorised_id_checks_agree_with_scalar_checks():
    rng = random.Random(7)
    ids = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.4:
            ids.append(rng.choice("ACEHJKLRSTUVWZ") + rng.choice("AEHRZ")
                       + f"{rng.randrange(10**9):09d}" + rng.choice(["KZ", "CN", "RU"]))
        elif r < 0.8:
            ids.append(f"{rng.randrange(10**18):018d}")
        else:
            ids.append(rng.choice(["RR47312482GB", "1234", "RR473124829gb", "", "RR-73124829GB"]))
    arr = pa.array(ids, pa.string())
    vec = plan_mod._valid_item_ids(arr)
    scalar = [bool(s) and plan_mod._item_id_problem(s) is None for s in ids]
    assert vec.tolist() == scalar
    assert 50 < sum(scalar) < 2800
    # and against the independent helpers at the top of this file
    assert plan_mod._is_s10(s10("47312482", "RR", "GB"))
    assert plan_mod._is_sscc(sscc("10614141234567890"))
    assert not plan_mod._is_s10("JJ473124829GB")


def test_large_manifest_is_checked_vectorised(tmp_path):
    n = 200_000
    ids = pa.array([s10(f"{i:08d}") for i in range(n)], pa.string())
    bad = ids.to_pylist()
    bad[n - 1] = bad[0]
    t = _manifest_table(bad, ["050000"] * n, [None] * n)
    pq.write_table(t, tmp_path / "m.parquet")
    p = only(problems_of(write(tmp_path, with_files(manifest="m.parquet"))))
    assert p.message.startswith(f"row {n}:") and "duplicate" in p.message


# ---------------------------------------------------------------------------------------------
# validate() on plans built in code


def built_plan(**kw) -> Plan:
    args = dict(name="T", version="1", home_country="KZ", chutes=tuple(range(1, 11)),
                special={"no_read": 9, "invalid": 9, "conflict": 10, "unknown_destination": 10,
                         "overflow": 10},
                destinations=[Destination("A", (1, 2)), Destination("B", (3,), "round_robin")],
                postcode_rules={"05": "A", "01": "B"}, country_rules={"KZ": "A"},
                service_rules={"E": "B"})
    args.update(kw)
    return Plan(**args)


def test_validate_built_plan_ok():
    assert validate(built_plan()) == []


def test_validate_built_plan_reports_without_lines():
    plan = built_plan(destinations=[Destination("A", (1, 2)), Destination("B", (2, 11), "rr")],
                      postcode_rules={"05": "A", "0 1": "B", "051": "A"},
                      manifest=_manifest_table([s10("00000001"), "X"], ["050 000", "050000"],
                                               [None, None]))
    ps = validate(plan)
    assert all(p.line is None and p.file == "<plan>" for p in ps)
    fields = [p.field for p in ps]
    assert fields.count("destinations.B.chutes") == 2       # 11 undeclared, 2 shared with A
    assert "destinations.B.policy" in fields
    assert 'rules.postcode."0 1"' in fields and "rules.postcode.051" in fields
    assert any(p.field == "postcode" and p.message.startswith("row 1:") and "spaces" in p.message
               for p in ps)
    assert any(p.field == "item_id" and p.message.startswith("row 2:") for p in ps)


def test_validate_uses_plan_source_as_file():
    ps = validate(built_plan(recirculation_limit=-1, source="x.toml"))
    assert [str(p) for p in ps] == ["x.toml: plan.recirculation_limit: must be an integer in "
                                    "0..255, not -1"]


# ---------------------------------------------------------------------------------------------
# TOML line finder


def test_toml_lines_handles_quotes_dotted_keys_and_multiline_values():
    text = '''\
# comment [not.a.table]
[plan]
chutes = [
  1,   # name = "inside an array"
  "2-3",
]
note = """
fake = 1
[fake.table]
"""
"quoted key" = 1
'lit.key' = 2
a.b = 3

[rules . postcode]
"0 5" = "X"
[[arr]]
x = { y = 1 }
'''
    lines = plan_mod._TomlLines(text)
    assert lines.line(("plan", "chutes")) == 3
    assert lines.line(("plan", "note")) == 7
    assert lines.line(("plan", "quoted key")) == 11
    assert lines.line(("plan", "lit.key")) == 12
    assert lines.line(("plan", "a", "b")) == 13
    assert lines.line(("rules", "postcode", "0 5")) == 16
    assert lines.line(("rules", "postcode", "missing")) == 15
    assert lines.line(("arr", "x", "y")) == 18
    assert ("plan", "name") not in lines.lines and ("plan", "fake") not in lines.lines
    assert ("fake", "table") not in lines.lines
    assert lines.line(("nowhere",)) is None


def test_docs_example_loads(tmp_path):
    doc = (REPO / "docs" / "plans.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc, re.S)
    toml_text = next(b for lang, b in blocks if lang == "toml")
    csvs = [b for lang, b in blocks if lang == "csv"]
    files = {"almaty_prefixes.csv": csvs[0], "manifest.csv": csvs[1]}
    plan = load_plan(write(tmp_path, toml_text, files))
    assert plan.manifest_rows() == 3 and "A05" in plan.postcode_rules
    assert plan.chutes == tuple(range(1, 61)) + (62, 64)


# ---------------------------------------------------------------------------------------------
# sorter plan check


def test_cli_check_default_plan(capsys):
    assert main(["plan", "check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Almaty hub" in out and "2026.11.1" in out
    s = summary(load_plan())
    c = s["counts"]
    assert f"chutes:              {c['chutes']}" in out
    assert f"destinations:        {c['destinations']}" in out
    assert (f"postcode {c['postcode_rules']}, country {c['country_rules']}, "
            f"service {c['service_rules']}") in out
    assert f"manifest rows:       {c['manifest_rows']}" in out
    assert "no_read 76" in out and "overflow 80" in out


def test_cli_check_json(capsys, tmp_path):
    assert main(["plan", "check", "--json", str(write(tmp_path, BASE))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["summary"]["counts"]["destinations"] == 2


def test_cli_check_bad_plan(capsys, tmp_path):
    text = edit("conflict = 10", "conflict = 99")
    text = edit('KZ = "ALMATY"', 'KZ = "NOWHERE"', text)
    path = write(tmp_path, text)
    assert main(["plan", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:{line_of(text, 'conflict')}: special.conflict: chute 99 not declared in "
        f"plan.chutes",
        f"{path}:{line_of(text, 'NOWHERE')}: rules.country.KZ: unknown destination 'NOWHERE'",
    ]


def test_cli_check_bad_plan_json(capsys, tmp_path):
    path = write(tmp_path, edit("conflict = 10", "conflict = 99"))
    assert main(["plan", "check", str(path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["problems"] == [{"file": str(path), "line": 10, "field": "special.conflict",
                                 "message": "chute 99 not declared in plan.chutes"}]


def test_cli_show(capsys):
    assert main(["plan", "show"]) == 0
    out = capsys.readouterr().out
    assert "ASTANA" in out and "round_robin" in out and "postcode Z" in out
    assert main(["plan", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["destinations"][0]["name"] == load_plan().destinations[0].name


def test_cli_usage_errors(capsys):
    assert main([]) == 2
    assert main(["plan"]) == 2
    assert main(["plan", "check", "a", "b"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_parser_structure():
    parser = build_parser()
    args = parser.parse_args(["plan", "check", "x.toml", "--json"])
    assert args.plan == "x.toml" and args.json and callable(args.func)
    assert args.func.__name__ == "cmd_plan_check"


def test_cli_subprocess(tmp_path):
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-c", "from sorter.cli import main; raise SystemExit(main())",
         "plan", "check", *a], cwd=REPO, capture_output=True, text=True, timeout=120)
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "Almaty hub" in ok.stdout and ok.stderr == ""
    text = edit('policy = "round_robin"', 'polcy = "round_robin"')
    path = write(tmp_path, text)
    bad = run(str(path))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        f"{path}:{line_of(text, 'polcy')}: destinations.ASTANA.polcy: unknown key 'polcy' "
        f"(did you mean 'policy'?) (allowed: chutes, policy)"]
