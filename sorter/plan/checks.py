"""Plan validation: every problem of a plan at once, with file, line and field.

`validate(plan)` checks plans built in code; the loader runs the same checks with the line
numbers of the TOML and CSV files it read (`_Context`).
"""

import csv
import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sorter.core.barcodes import gs1_check_digit, s10_check_digit
from sorter.core.codes import MAX_CHUTE, POLICIES, SPECIAL_REASONS
from sorter.core.countries import is_alpha2

from sorter.plan.model import (BUILT_IN, MANIFEST_PROBLEM_LIMIT, MAX_RECIRCULATION_LIMIT, Plan, Problem)


_TOP_KEYS = ("plan", "special", "destinations", "rules", "files")
_PLAN_KEYS = ("name", "version", "home_country", "recirculation_limit", "chutes")
_DEST_KEYS = ("chutes", "policy")
_RULE_KINDS = ("postcode", "country", "service")
_FILE_KEYS = ("postcode_prefixes", "manifest")
_MANIFEST_COLUMNS = ("item_id", "postcode", "country")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DEST_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_PREFIX = re.compile(r"[0-9A-Z]+\Z")
_SERVICE = re.compile(r"[A-Z]{1,2}\Z")
_RESERVED_SERVICE = "JKSTW"
_CHUTE_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*\Z")
_CHUTE_NUMBER = re.compile(r"\s*(\d+)\s*\Z")
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


# ---------------------------------------------------------------------------------------------
# Item id checks with messages for plan writers (digits by the reference decoder)


def _s10_problem(s: str) -> str | None:
    """Why `s` is not a valid UPU S10 item id, or None when it is one."""
    if len(s) != 13:
        return f"S10 item id has {len(s)} characters, not 13"
    if not re.fullmatch(r"[A-Z]{2}[0-9]{9}[A-Z]{2}", s):
        return "S10 item id is not 2 letters, 9 digits, 2 letters (upper case)"
    if s[0] in _RESERVED_SERVICE:
        return f"S10 service indicator {s[:2]!r} starts with reserved letter {s[0]}"
    expected = s10_check_digit(s[2:10])
    if int(s[10]) != expected:
        return f"S10 check digit is {s[10]}, expected {expected}"
    return None


def _sscc_problem(s: str) -> str | None:
    """Why `s` is not a valid SSCC (18 digits, GS1 mod-10), or None when it is one."""
    if not (s.isascii() and s.isdigit()):
        return "SSCC is not all digits"
    if len(s) != 18:
        hint = " (drop the leading AI 00)" if len(s) == 20 and s.startswith("00") else ""
        return f"SSCC has {len(s)} digits, not 18{hint}"
    expected = gs1_check_digit(s[:17])
    if int(s[17]) != expected:
        return f"SSCC check digit is {s[17]}, expected {expected}"
    return None


def _item_id_problem(s: str) -> str | None:
    """Why a manifest item id is neither a valid S10 nor a valid SSCC, or None."""
    if s[:1].isascii() and s[:1].isdigit():
        return _sscc_problem(s)
    if len(s) >= 2 and s[:2].isascii() and s[:2].isalpha():
        return _s10_problem(s)
    return "not an S10 item id (AA123456789BB) nor an SSCC (18 digits)"


def _is_s10(s: str) -> bool:
    return _s10_problem(s) is None


def _is_sscc(s: str) -> bool:
    return _sscc_problem(s) is None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _key_text(k: str) -> str:
    """A key as it would be written in TOML: bare when possible, else quoted."""
    return k if _BARE_KEY.fullmatch(k) else '"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dotted(parts: Iterable[str]) -> str:
    return ".".join(_key_text(p) for p in parts)


def _compress(numbers: Iterable[int]) -> str:
    """1, 2, 3, 7 -> '1-3, 7'."""
    ns = sorted(set(numbers))
    out: list[str] = []
    i = 0
    while i < len(ns):
        j = i
        while j + 1 < len(ns) and ns[j + 1] == ns[j] + 1:
            j += 1
        out.append(str(ns[i]) if i == j else f"{ns[i]}-{ns[j]}")
        i = j + 1
    return ", ".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _did_you_mean(key: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Where things are: line numbers of TOML keys


class _TomlLines:
    """Line of every table header and key in a TOML text (tomllib gives no positions).

    A light scanner, not a parser: it tracks the current table, dotted and quoted keys, and
    skips the inside of multi-line arrays, inline tables and strings. Good enough to point a
    plan writer at the right line; a key it cannot place falls back to its table's line.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple[str, ...], int] = {}
        self._depth = 0           # open [ or { of a value spanning lines
        self._ml: str | None = None   # open multi-line string delimiter
        table: tuple[str, ...] = ()
        for no, line in enumerate(text.splitlines(), 1):
            if self._ml or self._depth > 0:
                self._scan_value(line, 0)
                continue
            i = self._ws(line, 0)
            if i >= len(line) or line[i] == "#":
                continue
            if line[i] == "[":
                i += 2 if line.startswith("[[", i) else 1
                parts, _ = self._key(line, i)
                if parts:
                    table = tuple(parts)
                    self._record(table, no)
                continue
            parts, i = self._key(line, i)
            if not parts:
                continue
            self._record(table + tuple(parts), no)
            i = self._ws(line, i)
            if i < len(line) and line[i] == "=":
                self._scan_value(line, i + 1)

    def _record(self, path: tuple[str, ...], no: int) -> None:
        for k in range(1, len(path) + 1):
            self.lines.setdefault(path[:k], no)

    @staticmethod
    def _ws(s: str, i: int) -> int:
        while i < len(s) and s[i] in " \t":
            i += 1
        return i

    def _key(self, s: str, i: int) -> tuple[list[str], int]:
        parts: list[str] = []
        while True:
            i = self._ws(s, i)
            if i >= len(s):
                return parts, i
            if s[i] == '"':
                j = i + 1
                while j < len(s) and s[j] != '"':
                    j += 2 if s[j] == "\\" else 1
                raw = s[i + 1:j]
                try:
                    parts.append(tomllib.loads(f'k = "{raw}"')["k"])
                except tomllib.TOMLDecodeError:
                    parts.append(raw)
                i = j + 1
            elif s[i] == "'":
                j = s.find("'", i + 1)
                j = len(s) if j < 0 else j
                parts.append(s[i + 1:j])
                i = j + 1
            else:
                m = _BARE_KEY.match(s, i)
                if not m:
                    return parts, i
                parts.append(m.group())
                i = m.end()
            i = self._ws(s, i)
            if i < len(s) and s[i] == ".":
                i += 1
                continue
            return parts, i

    def _scan_value(self, s: str, i: int) -> None:
        n = len(s)
        while i < n:
            if self._ml:
                j = s.find(self._ml, i)
                if j < 0:
                    return
                i = j + 3
                while i < n and s[i] == self._ml[0]:   # """" ends with a quote in the string
                    i += 1
                self._ml = None
                continue
            c = s[i]
            if c == "#":
                return
            if s.startswith('"""', i) or s.startswith("'''", i):
                self._ml = s[i:i + 3]
                i += 3
            elif c == '"':
                i += 1
                while i < n and s[i] != '"':
                    i += 2 if s[i] == "\\" else 1
                i += 1
            elif c == "'":
                j = s.find("'", i + 1)
                i = n if j < 0 else j + 1
            else:
                if c in "[{":
                    self._depth += 1
                elif c in "]}":
                    self._depth -= 1
                i += 1

    def line(self, path: Iterable[str]) -> int | None:
        """Line of `path`, else of its closest enclosing table or key that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None


@dataclass
class _Origin:
    """Where a postcode rule was written (TOML key or CSV row)."""
    file: str
    line: int | None
    key_field: str        # field naming the prefix
    value_field: str      # field naming the destination
    text: str             # the prefix as written (before removing spaces)

    def at(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


class _Context:
    """How the semantic checks locate what they report."""

    def __init__(self, file: str, lines: _TomlLines | None = None):
        self.file = file
        self.lines = lines
        self.postcode_origin: dict[str, _Origin] = {}
        self.reported: set[str] = set()     # fields the loader already reported on
        # chute lists written non-empty whose every entry the loader rejected ("plan" for
        # plan.chutes, else a destination name): not reported again as empty
        self.nonempty_lists: set[str] = set()
        # plan.chutes missing or not an array: "not declared" would be noise for every chute
        self.chutes_unknown = False
        self.manifest_file: str | None = None
        self.manifest_lines: np.ndarray | None = None   # row -> CSV line, None: rows only

    def line(self, path: tuple[str, ...]) -> int | None:
        return None if self.lines is None else self.lines.line(path)

    def problem(self, out: list[Problem], path: tuple[str, ...], message: str) -> None:
        f = _dotted(path)
        if f not in self.reported:
            out.append(Problem(self.file, self.line(path), f, message))

    def where(self, path: tuple[str, ...]) -> str:
        """A short reference to another place in the plan, for messages."""
        ln = self.line(path)
        return _dotted(path) if ln is None else f"line {ln}"

    def origin(self, prefix: str) -> _Origin:
        o = self.postcode_origin.get(prefix)
        if o is None:
            f = _dotted(("rules", "postcode", prefix))
            o = _Origin(self.file, self.line(("rules", "postcode", prefix)), f, f, prefix)
        return o


# ---------------------------------------------------------------------------------------------
# Semantic validation (plans from files and plans built in code)


def validate(plan: Plan) -> list[Problem]:
    """Every problem in a plan built in code (problems carry no line numbers).

    An empty list means the router can compile the plan. `load_plan` runs the same checks
    with line numbers.
    """
    return _check(plan, _Context(plan.source or BUILT_IN))


def _check(plan: Plan, ctx: _Context) -> list[Problem]:
    out: list[Problem] = []
    P = ctx.problem

    # [plan] scalars
    for key in ("name", "version"):
        v = getattr(plan, key)
        if not isinstance(v, str) or not v.strip():
            P(out, ("plan", key), f"must be a non-empty string, not {v!r}")
    if not isinstance(plan.home_country, str) or not is_alpha2(plan.home_country):
        P(out, ("plan", "home_country"),
          f"{plan.home_country!r} is not an ISO 3166 alpha-2 country code (e.g. \"KZ\")")
    lim = plan.recirculation_limit
    if not _is_int(lim) or not 0 <= lim <= MAX_RECIRCULATION_LIMIT:
        P(out, ("plan", "recirculation_limit"),
          f"must be an integer in 0..{MAX_RECIRCULATION_LIMIT}, not {lim!r}")

    # chutes
    not_int = [c for c in plan.chutes if not _is_int(c)]
    ints = [c for c in plan.chutes if _is_int(c)]
    if not_int:
        P(out, ("plan", "chutes"), f"chute numbers must be integers, not {not_int[:5]!r}")
    outside = [c for c in ints if not 1 <= c <= MAX_CHUTE]
    if outside:
        P(out, ("plan", "chutes"), f"chute {_compress(outside)} outside 1..{MAX_CHUTE}")
    seen: set[int] = set()
    twice: set[int] = set()
    for c in ints:
        (twice if c in seen else seen).add(c)
    if twice:
        P(out, ("plan", "chutes"), f"chute {_compress(twice)} declared more than once")
    declared = {c for c in ints if 1 <= c <= MAX_CHUTE}
    if not plan.chutes and "plan" not in ctx.nonempty_lists:
        P(out, ("plan", "chutes"), "no chutes declared")

    def chute_list_problems(path: tuple[str, ...], chutes: Iterable[Any]) -> list[int]:
        """Report bad members of a chute list; return the good, declared ones."""
        bad_type = [c for c in chutes if not _is_int(c)]
        if bad_type:
            P(out, path, f"chute numbers must be integers, not {bad_type[:5]!r}")
        cs = [c for c in chutes if _is_int(c)]
        outside = [c for c in cs if not 1 <= c <= MAX_CHUTE]
        if outside:
            P(out, path, f"chute {_compress(outside)} outside 1..{MAX_CHUTE}")
        unknown = [c for c in cs if 1 <= c <= MAX_CHUTE and c not in declared]
        if unknown and not ctx.chutes_unknown:
            P(out, path, f"chute {_compress(unknown)} not declared in plan.chutes")
        return [c for c in cs if c in declared or (ctx.chutes_unknown and 1 <= c <= MAX_CHUTE)]

    # destinations
    owner: dict[int, str] = {}
    names: set[str] = set()
    for d in plan.destinations:
        base = ("destinations", d.name)
        if not isinstance(d.name, str) or not _DEST_NAME.match(d.name):
            P(out, base, f"destination name {d.name!r} must be letters, digits, '_' or '-'")
        if d.name in names:
            P(out, base, f"destination {d.name!r} defined twice")
        names.add(d.name)
        path = base + ("chutes",)
        if not d.chutes and d.name not in ctx.nonempty_lists:
            P(out, path, "empty chute group: a destination needs at least one chute")
        good = chute_list_problems(path, d.chutes)
        in_group: set[int] = set()
        again: set[int] = set()
        for c in good:
            (again if c in in_group else in_group).add(c)
        if again:
            P(out, path, f"chute {_compress(again)} listed more than once in the group")
        shared: dict[str, list[int]] = {}
        for c in dict.fromkeys(good):
            other = owner.get(c)
            if other is not None and other != d.name:
                shared.setdefault(other, []).append(c)
            else:
                owner[c] = d.name
        for other, cs in shared.items():
            P(out, path, f"chute {_compress(cs)} already in the group of destination {other} "
                         f"({ctx.where(('destinations', other, 'chutes'))}); "
                         f"a chute serves one destination")
        if d.policy not in POLICIES:
            P(out, base + ("policy",),
              f"unknown policy {d.policy!r}: expected one of {', '.join(POLICIES)}"
              f"{_did_you_mean(str(d.policy), POLICIES)}")

    # special chutes
    for reason in SPECIAL_REASONS:
        path = ("special", reason)
        if reason not in plan.special:
            P(out, path, f"special chute for {reason} missing (all of "
                         f"{', '.join(SPECIAL_REASONS)} are required; one chute may serve several)")
            continue
        c = plan.special[reason]
        if not _is_int(c):
            P(out, path, f"must be a chute number, not {c!r}")
        elif not 1 <= c <= MAX_CHUTE:
            P(out, path, f"chute {c} outside 1..{MAX_CHUTE}")
        elif c not in declared and not ctx.chutes_unknown:
            P(out, path, f"chute {c} not declared in plan.chutes")
        elif c in owner:
            P(out, path, f"chute {c} is special for {reason} and also in the group of "
                         f"destination {owner[c]} "
                         f"({ctx.where(('destinations', owner[c], 'chutes'))})")
    for reason in plan.special:
        if reason not in SPECIAL_REASONS:
            P(out, ("special", reason), f"unknown special reason {reason!r}: expected "
                                        f"{', '.join(SPECIAL_REASONS)}"
                                        f"{_did_you_mean(str(reason), SPECIAL_REASONS)}")

    # rules
    def unknown_dest(dest: Any) -> str:
        return (f"unknown destination {dest!r}{_did_you_mean(str(dest), names)}"
                if isinstance(dest, str) else f"destination must be a string, not {dest!r}")

    for prefix, dest in plan.postcode_rules.items():
        o = ctx.origin(prefix)
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            msg = (f"prefix {o.text!r} must be digits and upper-case letters [0-9A-Z]+"
                   + (" (spaces are removed only when loading files)"
                      if isinstance(prefix, str) and " " in prefix else ""))
            if o.key_field not in ctx.reported:
                out.append(Problem(o.file, o.line, o.key_field, msg))
        if dest not in names:
            if o.value_field not in ctx.reported:
                out.append(Problem(o.file, o.line, o.value_field, unknown_dest(dest)))
            continue
        # shadowed: same destination as the longest shorter prefix -> changes nothing
        if isinstance(prefix, str):
            for k in range(len(prefix) - 1, 0, -1):
                shorter = prefix[:k]
                if shorter in plan.postcode_rules:
                    if plan.postcode_rules[shorter] == dest:
                        so = ctx.origin(shorter)
                        out.append(Problem(
                            o.file, o.line, o.key_field,
                            f"prefix {o.text!r} -> {dest} is shadowed by prefix {so.text!r} -> "
                            f"{dest} ({so.at()}): it changes nothing, remove it"))
                    break

    for code, dest in plan.country_rules.items():
        path = ("rules", "country", code)
        if not isinstance(code, str) or not is_alpha2(code):
            P(out, path, f"{code!r} is not an ISO 3166 alpha-2 country code")
        if dest not in names:
            P(out, path, unknown_dest(dest))

    for key, dest in plan.service_rules.items():
        path = ("rules", "service", key)
        if not isinstance(key, str) or not _SERVICE.match(key):
            P(out, path, f"service key {key!r} must be 1 or 2 upper-case letters "
                         f"(the start of an S10 service indicator)")
        elif key[0] in _RESERVED_SERVICE:
            P(out, path, f"service key {key!r} starts with {key[0]}: J, K, S, T and W are "
                         f"reserved and never assigned")
        if dest not in names:
            P(out, path, unknown_dest(dest))

    # manifest
    if plan.manifest is not None:
        out.extend(_check_manifest(plan.manifest, ctx.manifest_file or ctx.file,
                                   ctx.manifest_lines, ctx.manifest_file is None))
    return out


# ---------------------------------------------------------------------------------------------
# Manifest: reading and vectorised checks


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _valid_item_ids(ids: pa.Array) -> np.ndarray:
    """True where ids is a valid S10 or SSCC (the compiled core's own check); nulls False."""
    from sorter.core import _core
    from sorter.core.events import arrow_offsets_data

    return _core.item_keys(*arrow_offsets_data(ids.fill_null(""))) != 0


def _np_bool(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def _check_manifest(table: pa.Table, file: str, lines: np.ndarray | None,
                    built: bool) -> list[Problem]:
    """Problems of a manifest table, vectorised; at most MANIFEST_PROBLEM_LIMIT + 1 of them."""
    missing = [c for c in _MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        return [Problem(file, None, "manifest", f"missing column {', '.join(missing)} "
                                                f"(needs {', '.join(_MANIFEST_COLUMNS)})")]
    cols: dict[str, pa.Array] = {}
    bad_types = []
    for c in _MANIFEST_COLUMNS:
        a = _as_array(table.column(c))
        if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
            bad_types.append(f"{c} is {a.type}")
        cols[c] = a
    if bad_types:
        return [Problem(file, None, "manifest", "columns must be strings: " + ", ".join(bad_types))]
    n = table.num_rows
    if n == 0:
        return []
    ids, postcode, country = cols["item_id"], cols["postcode"], cols["country"]

    id_missing = ~_np_bool(pc.greater(pc.utf8_length(ids), 0))   # null or empty
    id_valid = _valid_item_ids(ids)
    id_bad = ~id_missing & ~id_valid

    # duplicates: a row whose id appeared on an earlier row
    dup = np.zeros(n, bool)
    first = np.arange(n)
    present = np.flatnonzero(~id_missing)
    if present.size > 1:
        enc = pc.dictionary_encode(ids.take(pa.array(present)))
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        _, first_pos, inverse = np.unique(codes, return_index=True, return_inverse=True)
        first_row = present[first_pos[inverse.reshape(-1)]]
        dup[present] = first_row != present
        first[present] = first_row

    pc_present = _np_bool(pc.greater(pc.utf8_length(postcode), 0))
    has_country = _np_bool(pc.is_valid(country))
    no_address = ~pc_present & ~has_country
    # few distinct countries: check each once in Python, then mark rows vectorised
    wrong = [c for c in pc.unique(country.drop_null()).to_pylist() if not is_alpha2(c)]
    bad_country = (_np_bool(pc.is_in(country, value_set=pa.array(wrong, pa.string())))
                   if wrong else np.zeros(n, bool))
    pc_space = _np_bool(pc.match_substring(postcode, " ")) if built else np.zeros(n, bool)

    flags = (id_missing, id_bad, dup, no_address, bad_country, pc_space)
    total = int(sum(int(f.sum()) for f in flags))
    if total == 0:
        return []
    problems: list[Problem] = []
    for r in np.flatnonzero(np.logical_or.reduce(flags)):
        r = int(r)
        line = None if lines is None else int(lines[r])
        row = "" if lines is not None else f"row {r + 1}: "

        def add(field_: str, message: str) -> None:
            problems.append(Problem(file, line, field_, row + message))

        item = ids[r].as_py()
        if id_missing[r]:
            add("item_id", "missing item_id")
        if id_bad[r]:
            add("item_id", f"{item!r} is neither a valid S10 nor a valid SSCC: "
                           f"{_item_id_problem(item)}")
        if dup[r]:
            f = int(first[r])
            at = f"line {int(lines[f])}" if lines is not None else f"row {f + 1}"
            add("item_id", f"duplicate item_id {item!r} (first at {at})")
        if no_address[r]:
            add("postcode", "neither postcode nor country given")
        if bad_country[r]:
            add("country", f"{country[r].as_py()!r} is not an ISO 3166 alpha-2 country code")
        if pc_space[r]:
            add("postcode", f"postcode {postcode[r].as_py()!r} contains spaces (remove them)")
        if len(problems) >= MANIFEST_PROBLEM_LIMIT:
            break
    problems = problems[:MANIFEST_PROBLEM_LIMIT]
    if total > len(problems):
        problems.append(Problem(file, None, "manifest",
                                f"and {total - len(problems)} more manifest problems not shown "
                                f"({total} in all)"))
    return problems


def _normalise_manifest(table: pa.Table, file: str, problems: list[Problem]) -> pa.Table | None:
    """item_id, postcode, country as string columns; empty -> null; spaces out of postcodes."""
    if "item_id" not in table.column_names:
        problems.append(Problem(file, 1 if file.lower().endswith(".csv") else None, "item_id",
                                f"missing column item_id (columns: "
                                f"{', '.join(table.column_names) or 'none'})"))
        return None
    n = table.num_rows
    out = {}
    bad = False
    for c in _MANIFEST_COLUMNS:
        if c not in table.column_names:
            a: pa.Array = pa.nulls(n, pa.string())
        else:
            a = _as_array(table.column(c))
            t = a.type
            if pa.types.is_dictionary(t):
                t = t.value_type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
                problems.append(Problem(file, None, c,
                                        f"column {c} must hold strings, not {a.type} "
                                        f"(store ids and postcodes as text)"))
                bad = True
                continue
            a = a.cast(pa.string())
        if c == "postcode":
            a = pc.replace_substring(a, " ", "")
        a = pc.if_else(pc.equal(pc.utf8_length(a), 0), pa.scalar(None, pa.string()), a)
        out[c] = a
    if bad:
        return None
    return pa.table(out, schema=pa.schema([(c, pa.string()) for c in _MANIFEST_COLUMNS]))


def _read_manifest_csv(path: Path, file: str, problems: list[Problem]
                       ) -> tuple[pa.Table | None, np.ndarray | None]:
    import pyarrow.csv as pcsv

    with open(path, encoding="utf-8-sig", newline="") as f:
        header_line = f.readline()
    header = [h.strip() for h in next(csv.reader([header_line]), [])]
    if not header_line.strip():
        problems.append(Problem(file, 1, "item_id", "empty file: expected a header row "
                                                    "item_id,postcode,country"))
        return None, None
    if "item_id" not in header:
        problems.append(Problem(file, 1, "item_id", f"header has no item_id column "
                                                    f"(found: {', '.join(header)})"))
        return None, None
    want = [c for c in _MANIFEST_COLUMNS if c in header]

    def read(threads: bool) -> tuple[pa.Table, list]:
        bad_rows: list = []

        def handler(row):
            bad_rows.append(row)
            return "skip"

        t = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(use_threads=threads, column_names=header, skip_rows=1),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=handler),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, include_columns=want,
                strings_can_be_null=True, null_values=[""]))
        return t, bad_rows

    try:
        table, bad_rows = read(True)
        if bad_rows and any(r.number is None for r in bad_rows):
            table, bad_rows = read(False)      # single-threaded reading numbers the rows
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        problems.append(Problem(file, None, "manifest", f"cannot read CSV: {e}"))
        return None, None
    for r in bad_rows[:MANIFEST_PROBLEM_LIMIT]:
        problems.append(Problem(file, r.number, "manifest",
                                f"expected {r.expected_columns} columns, found {r.actual_columns}"))
    if len(bad_rows) > MANIFEST_PROBLEM_LIMIT:
        problems.append(Problem(
            file, None, "manifest",
            f"and {len(bad_rows) - MANIFEST_PROBLEM_LIMIT} more malformed rows"))
    # physical line of each parsed row: header is line 1, skipped malformed rows leave gaps
    total = table.num_rows + len(bad_rows)
    lines = np.arange(2, total + 2, dtype=np.int64)
    if bad_rows:
        lines = np.setdiff1d(lines, np.array([r.number for r in bad_rows], np.int64))
    # blank lines come through as all-null rows: drop them
    blank = np.ones(table.num_rows, bool)
    for c in table.column_names:
        blank &= ~_np_bool(pc.is_valid(table.column(c)))
    if blank.any():
        keep = np.flatnonzero(~blank)
        table = table.take(pa.array(keep))
        lines = lines[keep]
    return table, lines


def _read_manifest(path: Path, file: str, problems: list[Problem]
                   ) -> tuple[pa.Table | None, np.ndarray | None]:
    """Read a manifest file; returns the raw table and row -> line numbers (CSV only)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_manifest_csv(path, file, problems)
        if suffix in (".arrow", ".feather", ".ipc", ".arrows"):
            import pyarrow.ipc as ipc
            with pa.memory_map(str(path)) as source:
                try:
                    table = ipc.open_file(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    table = ipc.open_stream(source).read_all()
            return table, None
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq
            names = pq.read_schema(path).names
            return pq.read_table(path, columns=[c for c in _MANIFEST_COLUMNS if c in names]
                                 or None), None
    except (pa.ArrowException, OSError) as e:
        problems.append(Problem(file, None, "manifest", f"cannot read {suffix[1:]} file: {e}"))
        return None, None
    problems.append(Problem(file, None, "manifest",
                            f"unknown manifest format {suffix or '(no extension)'!r}: "
                            f"use .csv, .arrow (IPC file) or .parquet"))
    return None, None


