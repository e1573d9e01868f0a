"""Loading sort plans: TOML plus CSV prefix tables and CSV / Arrow / Parquet manifests.

`load_plan(path=None)` reads a plan file (None: the bundled `DEFAULT_PLAN`) and the files it
names, runs every check, and raises `PlanError` listing every problem found. `summary(plan)`
gives name, version and counts for the CLI and logs. The file format: docs/plans.md.
"""

import csv
import tomllib
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from sorter.core.codes import MAX_CHUTE, SPECIAL_REASONS

from sorter.plan.model import (DEFAULT_PLAN, DEFAULT_RECIRCULATION_LIMIT, MAX_RECIRCULATION_LIMIT,
                               Destination, Plan, PlanError, Problem)
from sorter.plan.checks import (_CHUTE_NUMBER, _CHUTE_RANGE, _DEST_KEYS, _FILE_KEYS, _PLAN_KEYS,
                                  _RULE_KINDS, _TOML_AT, _TOP_KEYS, _Context, _Origin, _TomlLines,
                                  _check, _did_you_mean, _dotted, _is_int, _key_text,
                                  _normalise_manifest, _read_manifest, _type_name)

# ---------------------------------------------------------------------------------------------
# Loading


class _Loader:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.file = str(path)
        self.text = text
        self.lines = _TomlLines(text)
        self.problems: list[Problem] = []
        self.ctx = _Context(self.file, self.lines)

    # -- reporting
    def problem(self, path: tuple[str, ...], message: str, mark: bool = True) -> None:
        f = _dotted(path)
        if mark:
            self.ctx.reported.add(f)
        self.problems.append(Problem(self.file, self.lines.line(path), f, message))

    def unknown_keys(self, table: dict, path: tuple[str, ...], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for k in table:
            if k not in allowed:
                self.problem(path + (k,), f"unknown key {k!r}{_did_you_mean(k, allowed)} "
                                          f"(allowed: {', '.join(allowed)})")

    def table(self, parent: dict, path: tuple[str, ...], required: bool) -> dict:
        v = parent.get(path[-1])
        if v is None:
            if required:
                self.problem(path, f"missing [{_dotted(path)}] table")
            return {}
        if not isinstance(v, dict):
            self.problem(path, f"must be a table [{_dotted(path)}], not {_type_name(v)}")
            return {}
        return v

    def string(self, table: dict, path: tuple[str, ...], required: bool) -> str | None:
        v = table.get(path[-1])
        if v is None:
            if required:
                self.problem(path, f"missing required key {path[-1]!r}")
            return None
        if not isinstance(v, str):
            self.problem(path, f"must be a string, not {_type_name(v)} ({v!r})")
            return None
        return v

    def chute_list(self, table: dict, path: tuple[str, ...]) -> list[Any]:
        v = table.get(path[-1])
        if v is None:
            self.problem(path, "missing required key 'chutes' (a list of numbers and "
                               "\"a-b\" ranges)")
            return []
        if not isinstance(v, list):
            self.problem(path, f"must be an array of chute numbers and \"a-b\" ranges, "
                               f"not {_type_name(v)}")
            return []
        if v:
            self.ctx.nonempty_lists.add("plan" if path[0] == "plan" else path[1])
        out: list[Any] = []
        for item in v:
            if _is_int(item):
                out.append(item)
                continue
            if isinstance(item, str):
                m = _CHUTE_NUMBER.match(item)
                if m:
                    out.append(int(m.group(1)))
                    continue
                m = _CHUTE_RANGE.match(item)
                if m:
                    a, b = int(m.group(1)), int(m.group(2))
                    if a > b:
                        self.problem(path, f"chute range {item!r} runs backwards", mark=False)
                        continue
                    if a < 1 or b > MAX_CHUTE:
                        self.problem(path, f"chute range {item!r} reaches outside 1..{MAX_CHUTE}",
                                     mark=False)
                        a, b = max(a, 1), min(b, MAX_CHUTE)
                    out.extend(range(a, b + 1))
                    continue
            self.problem(path, f"{item!r} is not a chute number nor an \"a-b\" range",
                         mark=False)
        return out

    def string_map(self, table: dict, path: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in table.items():
            if isinstance(v, str):
                out[k] = v
            else:
                self.problem(path + (k,), f"must be a destination name (a string), "
                                          f"not {_type_name(v)}")
        return out

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.path.parent / p

    # -- the whole plan
    def load(self, doc: dict) -> Plan:
        self.unknown_keys(doc, (), _TOP_KEYS)

        # [plan]
        if isinstance(doc.get("plan"), dict):
            head = doc["plan"]
            self.unknown_keys(head, ("plan",), _PLAN_KEYS)
            name = self.string(head, ("plan", "name"), True)
            version = self.string(head, ("plan", "version"), True)
            home = self.string(head, ("plan", "home_country"), True)
            limit = head.get("recirculation_limit", DEFAULT_RECIRCULATION_LIMIT)
            if not _is_int(limit):
                self.problem(("plan", "recirculation_limit"),
                             f"must be an integer in 0..{MAX_RECIRCULATION_LIMIT}, "
                             f"not {_type_name(limit)} ({limit!r})")
                limit = DEFAULT_RECIRCULATION_LIMIT
            chutes = self.chute_list(head, ("plan", "chutes"))
            self.ctx.chutes_unknown = not isinstance(head.get("chutes"), list)
        else:
            # one problem for the whole table, not one per key it should hold
            self.table(doc, ("plan",), required=True)
            name = version = home = None
            limit, chutes = DEFAULT_RECIRCULATION_LIMIT, []
            self.ctx.chutes_unknown = True
            self.ctx.reported.update(_dotted(("plan", k)) for k in _PLAN_KEYS)

        # [special]
        special_t = self.table(doc, ("special",), required=False)
        special: dict[str, Any] = {}
        for k, v in special_t.items():
            if k not in SPECIAL_REASONS:
                self.problem(("special", k), f"unknown special reason {k!r}"
                                             f"{_did_you_mean(k, SPECIAL_REASONS)} "
                                             f"(allowed: {', '.join(SPECIAL_REASONS)})")
            elif not _is_int(v):
                self.problem(("special", k), f"must be a chute number, not {_type_name(v)} ({v!r})")
            else:
                special[k] = v

        # [destinations.NAME]
        dests_t = self.table(doc, ("destinations",), required=False)
        destinations: list[Destination] = []
        for dname, d in dests_t.items():
            base = ("destinations", dname)
            if not isinstance(d, dict):
                self.problem(base, f"must be a table [destinations.{_key_text(dname)}] with "
                                   f"chutes and policy, not {_type_name(d)}")
                continue
            self.unknown_keys(d, base, _DEST_KEYS)
            cs = self.chute_list(d, base + ("chutes",))
            policy = self.string(d, base + ("policy",), False)
            destinations.append(Destination(dname, tuple(cs), policy or "fill_first"))

        # [rules.*]
        rules_t = self.table(doc, ("rules",), required=False)
        self.unknown_keys(rules_t, ("rules",), _RULE_KINDS)
        postcode_raw = self.string_map(self.table(rules_t, ("rules", "postcode"), False),
                                       ("rules", "postcode"))
        country = self.string_map(self.table(rules_t, ("rules", "country"), False),
                                  ("rules", "country"))
        service = self.string_map(self.table(rules_t, ("rules", "service"), False),
                                  ("rules", "service"))
        postcode: dict[str, str] = {}
        for raw, dest in postcode_raw.items():
            path = ("rules", "postcode", raw)
            norm = raw.replace(" ", "")
            if norm in postcode:
                o = self.ctx.postcode_origin[norm]
                self.problem(path, f"duplicate prefix {raw!r}: {o.text!r} at {o.at()} is the "
                                   f"same prefix once spaces are removed", mark=False)
                continue
            postcode[norm] = dest
            f = _dotted(path)
            self.ctx.postcode_origin[norm] = _Origin(self.file, self.lines.line(path), f, f, raw)

        # [files]
        files_t = self.table(doc, ("files",), required=False)
        self.unknown_keys(files_t, ("files",), _FILE_KEYS)
        prefixes_rel = self.string(files_t, ("files", "postcode_prefixes"), False)
        manifest_rel = self.string(files_t, ("files", "manifest"), False)
        if prefixes_rel is not None:
            self.load_prefix_csv(prefixes_rel, postcode)
        manifest = None
        if manifest_rel is not None:
            manifest = self.load_manifest(manifest_rel)

        return Plan(
            name=name or "", version=version or "", home_country=home or "",
            chutes=tuple(chutes), special={r: special[r] for r in SPECIAL_REASONS if r in special},
            destinations=destinations, postcode_rules=postcode, country_rules=country,
            service_rules=service, manifest=manifest, recirculation_limit=limit,
            source=self.file)

    def existing(self, rel: str, key: str) -> Path | None:
        p = self.resolve(rel)
        if not p.is_file():
            self.problem(("files", key), f"file not found: {p}")
            return None
        return p

    def load_prefix_csv(self, rel: str, postcode: dict[str, str]) -> None:
        p = self.existing(rel, "postcode_prefixes")
        if p is None:
            return
        file = str(p)
        try:
            with open(p, encoding="utf-8-sig", newline="") as f:
                rows = list(_numbered_csv(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            self.problems.append(Problem(file, None, "postcode_prefixes", f"cannot read CSV: {e}"))
            return
        if not rows:
            self.problems.append(Problem(file, 1, "prefix", "empty file: expected a header row "
                                                            "prefix,destination"))
            return
        header_line, header = rows[0]
        cols = [h.strip().lower() for h in header]
        missing = [c for c in ("prefix", "destination") if c not in cols]
        if missing:
            self.problems.append(Problem(file, header_line, missing[0],
                                         f"header lacks column {' and '.join(missing)} "
                                         f"(found: {', '.join(cols)})"))
            return
        ip, id_ = cols.index("prefix"), cols.index("destination")
        for line, row in rows[1:]:
            if not any(cell.strip() for cell in row):
                continue
            raw = row[ip] if ip < len(row) else ""
            dest = (row[id_] if id_ < len(row) else "").strip()
            norm = raw.replace(" ", "").strip()
            if not norm:
                self.problems.append(Problem(file, line, "prefix", "missing prefix"))
                continue
            if not dest:
                self.problems.append(Problem(file, line, "destination", "missing destination"))
                continue
            if norm in postcode:
                o = self.ctx.postcode_origin[norm]
                same = "" if o.text == raw.strip() else " once spaces are removed"
                self.problems.append(Problem(file, line, "prefix",
                                             f"duplicate prefix {raw.strip()!r}: already given as "
                                             f"{o.text!r} at {o.at()}{same}"))
                continue
            postcode[norm] = dest
            self.ctx.postcode_origin[norm] = _Origin(file, line, "prefix", "destination",
                                                     raw.strip())

    def load_manifest(self, rel: str) -> pa.Table | None:
        p = self.existing(rel, "manifest")
        if p is None:
            return None
        file = str(p)
        table, lines = _read_manifest(p, file, self.problems)
        if table is None:
            return None
        table = _normalise_manifest(table, file, self.problems)
        self.ctx.manifest_file = file
        self.ctx.manifest_lines = lines
        return table


def _numbered_csv(f) -> Iterable[tuple[int, list[str]]]:
    """CSV rows with the (1-based) line each starts on."""
    reader = csv.reader(f)
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def load_plan(path: str | Path | None = None) -> Plan:
    """Read, check and return a plan; `None` reads the bundled DEFAULT_PLAN.

    Raises PlanError listing every problem found: TOML syntax, missing or ill-typed keys,
    unknown keys, chute and rule consistency, prefix CSV rows and manifest rows.
    """
    p = DEFAULT_PLAN if path is None else Path(path)
    file = str(p)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PlanError([Problem(file, None, "plan", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError([Problem(file, None, "plan", f"cannot read plan: {e}")]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_AT.search(str(e))
        line = int(m.group(1)) if m else None
        raise PlanError([Problem(file, line, "syntax", f"TOML syntax error: {e}")]) from None

    loader = _Loader(p, text)
    plan = loader.load(doc)
    problems = loader.problems + _check(plan, loader.ctx)
    if problems:
        raise PlanError(_sorted(problems, file))
    return plan


def _sorted(problems: list[Problem], plan_file: str) -> list[Problem]:
    """Plan file first, then the other files in order of first mention; by line in each."""
    rank: dict[str, int] = {plan_file: 0}
    for pr in problems:
        rank.setdefault(pr.file, len(rank))
    big = 1 << 62
    return sorted(problems, key=lambda pr: (rank[pr.file], big if pr.line is None else pr.line))


# ---------------------------------------------------------------------------------------------
# Summary


def summary(plan: Plan) -> dict[str, Any]:
    """A JSON-friendly overview of a plan: identity, counts and special chutes."""
    return {
        "name": plan.name,
        "version": plan.version,
        "home_country": plan.home_country,
        "source": plan.source,
        "counts": {
            "chutes": len(plan.chutes),
            "destinations": len(plan.destinations),
            "postcode_rules": len(plan.postcode_rules),
            "country_rules": len(plan.country_rules),
            "service_rules": len(plan.service_rules),
            "manifest_rows": plan.manifest_rows(),
        },
        "recirculation_limit": plan.recirculation_limit,
        "special": {r: plan.special[r] for r in SPECIAL_REASONS if r in plan.special},
    }
