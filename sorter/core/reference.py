"""The plain-Python reference router: docs/routing.md written as code.

Slow on purpose and readable on purpose. It is the executable specification and the oracle the
compiled core is tested against, decision by decision; it shares only the reference decoder
(`sorter.core.barcodes`) and the plan model with the rest of the package, never the core.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from sorter.core.barcodes import Read, decode
from sorter.core.codes import (
    CHUTE_AVAILABLE,
    CHUTE_STATES,
    CONFLICT,
    INVALID,
    LATE,
    NO_CHUTE,
    NO_DESTINATION,
    NO_READ,
    OVERFLOW,
    REASONS,
    RECIRCULATE,
    SORTED,
    UNKNOWN_DESTINATION,
)
from sorter.core.countries import alpha2_to_numeric
from sorter.core.events import Decisions, EventBatch

if TYPE_CHECKING:                   # the core takes any object with a Plan's fields
    from sorter.plan import Plan


class ReferenceRouter:
    """Same API as `sorter.core.router.Router`."""

    def __init__(self, plan: Plan):
        self._states: dict[int, int] = {}
        self.swap_plan(plan)

    # -- plan and state ---------------------------------------------------------------------
    def swap_plan(self, plan: Plan) -> None:
        self.plan = plan
        self._ids = plan.destination_ids()
        self._home = alpha2_to_numeric(plan.home_country)
        self._prefixes = {p.replace(" ", ""): self._ids[d] for p, d in plan.postcode_rules.items()}
        self._countries = {alpha2_to_numeric(c): self._ids[d] for c, d in plan.country_rules.items()}
        self._services = {s: self._ids[d] for s, d in plan.service_rules.items()}
        self._manifest: dict[str, tuple[str | None, str | None]] = {}
        if plan.manifest is not None:
            cols = plan.manifest.select(["item_id", "postcode", "country"]).to_pydict()
            for item, postcode, country in zip(cols["item_id"], cols["postcode"], cols["country"]):
                self._manifest.setdefault(item, (postcode or None, country))
        self._last_position = [-1] * len(plan.destinations)   # round robin, per destination

    def set_chute_state(self, chute: int, state: int | str) -> None:
        self._states[chute] = CHUTE_STATES.index(state) if isinstance(state, str) else int(state)

    def chute_state(self, chute: int) -> str:
        return CHUTE_STATES[self._states.get(chute, CHUTE_AVAILABLE)]

    def _available(self, chute: int) -> bool:
        return chute != NO_CHUTE and self._states.get(chute, CHUTE_AVAILABLE) == CHUTE_AVAILABLE

    # -- section 2: one read to a destination -------------------------------------------------
    def _longest_prefix(self, postcode: str) -> int:
        for end in range(len(postcode), -1, -1):
            if postcode[:end] in self._prefixes:
                return self._prefixes[postcode[:end]]
        return NO_DESTINATION

    def resolve_address(self, country: int | None, postcode: str | None,
                        item_id: str | None = None) -> int:
        """Steps 2 to 6: country abroad, postcode prefix, manifest, home country."""
        if country is not None and country != self._home:
            return self._countries.get(country, NO_DESTINATION)
        if postcode:
            dest = self._longest_prefix(postcode)
            if dest != NO_DESTINATION:
                return dest
        if item_id is not None and item_id in self._manifest:
            m_postcode, m_country = self._manifest[item_id]
            if m_country is not None:
                m_country = alpha2_to_numeric(m_country)
            elif m_postcode:
                m_country = self._home          # a postcode without a country is domestic
            return self.resolve_address(m_country, m_postcode)
        if country == self._home:
            return self._countries.get(country, NO_DESTINATION)
        return NO_DESTINATION

    def resolve(self, read: Read) -> tuple[int, bool]:
        """(destination or -1, whether a service rule decided it) for one valid read."""
        if read.service is not None:
            for key in (read.service, read.service[0]):
                if key in self._services:
                    return self._services[key], True
        return self.resolve_address(read.dest_country, read.postcode, read.item_id), False

    # -- section 3: one decision per event ----------------------------------------------------
    def _choose_chute(self, dest: int) -> int:
        group = self.plan.destinations[dest]
        chutes = group.chutes
        if group.policy == "round_robin":
            for step in range(1, len(chutes) + 1):
                position = (self._last_position[dest] + step) % len(chutes)
                if self._available(chutes[position]):
                    self._last_position[dest] = position
                    return chutes[position]
            return NO_CHUTE
        return next((c for c in chutes if self._available(c)), NO_CHUTE)

    def _special(self, reason: int) -> int:
        chute = self.plan.special.get(REASONS[reason], NO_CHUTE)
        return chute if self._available(chute) else NO_CHUTE

    def decide(self, reads: list[bytes], recirculations: int = 0, ts_ns: int = 0,
               now_ns: int = 0, deadline_ns: int = 0) -> tuple[int, int, int]:
        """(chute, reason code, destination) for one event."""
        if deadline_ns > 0 and int(now_ns) - int(ts_ns) > deadline_ns:     # exact: no wrap
            return NO_CHUTE, LATE, NO_DESTINATION
        if not reads:
            return self._special(NO_READ), NO_READ, NO_DESTINATION
        valid = [r for r in (decode(raw, self._home) for raw in reads) if r.valid]
        if not valid:
            return self._special(INVALID), INVALID, NO_DESTINATION
        resolved = [self.resolve(r) for r in valid]
        by_service = {d for d, via_service in resolved if via_service}
        candidates = by_service or {d for d, _ in resolved if d != NO_DESTINATION}
        if not candidates:
            return self._special(UNKNOWN_DESTINATION), UNKNOWN_DESTINATION, NO_DESTINATION
        if len(candidates) > 1:
            return self._special(CONFLICT), CONFLICT, NO_DESTINATION
        (dest,) = candidates
        chute = self._choose_chute(dest)
        if chute != NO_CHUTE:
            return chute, SORTED, dest
        if recirculations < self.plan.recirculation_limit:
            return NO_CHUTE, RECIRCULATE, dest
        return self._special(OVERFLOW), OVERFLOW, dest

    def route(self, batch: EventBatch, *, now_ns: int | None = None,
              deadline_ns: int = 0) -> Decisions:
        if deadline_ns > 0 and now_ns is None:
            now_ns = time.time_ns()
        rows = [self.decide(batch.reads(i), int(batch.recirculations[i]), int(batch.ts_ns[i]),
                            now_ns or 0, deadline_ns) for i in range(len(batch))]
        chute, reason, dest = zip(*rows) if rows else ((), (), ())
        return Decisions(np.array(chute, np.uint16), np.array(reason, np.uint8),
                         np.array(dest, np.int32))

    def destination_name(self, dest: int) -> str | None:
        return self.plan.destinations[dest].name if dest >= 0 else None
