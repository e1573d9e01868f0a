"""The sort plan model: destinations, chutes, rules, manifest, and the problems of a plan.

A plan says which destination each routing key goes to and which chutes serve each
destination. `sorter.plan.load` reads one from files, `sorter.plan.checks` checks one;
`sorter.core.router` compiles it into the core's tables and `sorter.core.reference`
interprets it directly.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa


@dataclass(frozen=True)
class Destination:
    """A logical destination served by a group of one or more chutes."""
    name: str
    chutes: tuple[int, ...]
    policy: str = "fill_first"   # one of codes.POLICIES


@dataclass
class Plan:
    """A validated (or, in tests, directly built) sort plan.

    Destinations are referred to by name in the rules; their index in `destinations` is the
    destination id that the core and the reference router report.
    """
    name: str
    version: str
    home_country: str                      # ISO alpha-2, e.g. "KZ"
    chutes: tuple[int, ...]                # every physical chute the plan knows (1..65535)
    special: dict[str, int]                # reason name (codes.SPECIAL_REASONS) -> chute
    destinations: list[Destination]
    postcode_rules: dict[str, str] = field(default_factory=dict)   # prefix -> destination name
    country_rules: dict[str, str] = field(default_factory=dict)    # alpha-2 -> destination name
    service_rules: dict[str, str] = field(default_factory=dict)    # 1 or 2 letters -> destination name
    # Pre-advice: columns item_id (S10 or SSCC), postcode (nullable), country (alpha-2, nullable).
    manifest: pa.Table | None = None
    recirculation_limit: int = 3
    source: str | None = None              # file the plan came from, for messages

    def destination_ids(self) -> dict[str, int]:
        return {d.name: i for i, d in enumerate(self.destinations)}

    def manifest_rows(self) -> int:
        return 0 if self.manifest is None else self.manifest.num_rows


# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a plan, located as precisely as the source allows.

    `file` is the plan, prefix CSV or manifest file (`<plan>` for a plan built in code),
    `line` is 1-based (CSV: the header is line 1) or None when there is no line to point at
    (plans built in code, Arrow/Parquet manifests, a missing table), `field` is the dotted
    TOML key (`destinations.ALMATY.policy`) or the CSV column (`prefix`, `item_id`).
    """
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class PlanError(Exception):
    """A plan that cannot be used; `problems` lists everything found, not just the first."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"sort plan has {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head + ":"] + [f"  {p}" for p in self.problems])


# ---------------------------------------------------------------------------------------------
# Constants

def _default_plan_path() -> Path:
    res = importlib.resources.files(__package__ or "sorter") / "data" / "kz_hub.toml"
    return res if isinstance(res, Path) else Path(__file__).with_name("data") / "kz_hub.toml"


DEFAULT_PLAN: Path = _default_plan_path()
"""The bundled sample plan (an Almaty hub), used when no plan is named."""

BUILT_IN = "<plan>"                     # file name in problems of plans built in code
MANIFEST_PROBLEM_LIMIT = 50             # manifest problems reported one by one, then a count
DEFAULT_RECIRCULATION_LIMIT = 3
MAX_RECIRCULATION_LIMIT = 255
