"""Sort plans: the data model, TOML/CSV loading and validation.

A plan says which destination each routing key goes to and which chutes serve each
destination. This module only reads and checks plans; `sorter.router` compiles a `Plan`
into the core's tables and `sorter.reference` interprets it directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


