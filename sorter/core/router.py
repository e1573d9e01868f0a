"""The Python face of the compiled core: compile a Plan, route EventBatches.

    router = Router(load_plan())
    decisions = router.route(EventBatch.from_reads([[b"RR473124829GB"], []]))

`Router` and `sorter.core.reference.ReferenceRouter` share this API; the reference is the readable
specification, this one is the fast path.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sorter.core import _core
from sorter.core.codes import (
    CHUTE_STATES,
    MAX_CHUTE,
    POLICIES,
    REASON_CODE,
    SPECIAL_REASONS,
)
from sorter.core.countries import alpha2_to_numeric
from sorter.core.events import Decisions, EventBatch, arrow_offsets_data

if TYPE_CHECKING:                   # the core takes any object with a Plan's fields
    from sorter.plan import Plan

NO_COUNTRY = 0xFFFF
MAX_POSTCODE = 20
TRIE_FANOUT = 36


def normalise_prefix(prefix: str) -> str:
    """A postcode prefix as the core matches it: spaces removed, [0-9A-Z] only."""
    p = prefix.replace(" ", "")
    if not p.isascii() or not all(c.isdigit() or "A" <= c <= "Z" for c in p):
        raise ValueError(f"postcode prefix {prefix!r} has characters outside 0-9 A-Z")
    if not 0 < len(p) <= MAX_POSTCODE:
        raise ValueError(f"postcode prefix {prefix!r} is empty or longer than {MAX_POSTCODE}")
    return p


def _trie(rules: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Prefix trie over 0-9A-Z: children (n_nodes x 36) and the destination at each node."""
    children = [[-1] * TRIE_FANOUT]
    dest = [-1]
    for prefix, d in rules.items():
        node = 0
        for ch in normalise_prefix(prefix):
            idx = ord(ch) - 48 if ch.isdigit() else ord(ch) - 55
            if children[node][idx] < 0:
                children[node][idx] = len(children)
                children.append([-1] * TRIE_FANOUT)
                dest.append(-1)
            node = children[node][idx]
        dest[node] = d
    return np.array(children, np.int32), np.array(dest, np.int32)


def _manifest_columns(table: pa.Table, home: int):
    """Item keys, destination countries and postcodes of a manifest, vectorised."""
    offsets, data = arrow_offsets_data(table.column("item_id"))
    keys = _core.item_keys(offsets, data)
    country = table.column("country").combine_chunks()
    postcode = table.column("postcode").combine_chunks()
    countries = np.full(len(table), NO_COUNTRY, np.uint16)
    if len(table):
        encoded = country.dictionary_encode()
        lookup = np.array([alpha2_to_numeric(c) for c in encoded.dictionary.to_pylist()] or [0],
                          np.uint16)
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        has_country = country.is_valid().to_numpy(zero_copy_only=False)
        countries[has_country] = lookup[idx[has_country].astype(np.int64)]
        has_postcode = pc.greater(pc.binary_length(postcode.fill_null("")), 0).to_numpy(
            zero_copy_only=False)
        countries[~has_country & has_postcode] = home
    pc_offsets, pc_data = arrow_offsets_data(postcode.fill_null(""))
    return keys, countries, pc_offsets, pc_data


def compile_plan(plan: Plan) -> _core.CompiledPlan:
    """Turn a Plan into the core's immutable tables (once per plan load, not per event)."""
    ids = plan.destination_ids()

    def dest_of(name: str, where: str) -> int:
        try:
            return ids[name]
        except KeyError:
            raise ValueError(f"{where} names unknown destination {name!r}") from None

    children, trie_dest = _trie({p: dest_of(d, f"postcode rule {p!r}")
                                 for p, d in plan.postcode_rules.items()})
    country_dest = np.full(1000, -1, np.int32)
    for alpha2, d in plan.country_rules.items():
        country_dest[alpha2_to_numeric(alpha2)] = dest_of(d, f"country rule {alpha2!r}")
    service_dest = np.full(26 * 27, -1, np.int32)
    for key, d in plan.service_rules.items():
        if not (1 <= len(key) <= 2 and key.isascii() and key.isalpha() and key.isupper()):
            raise ValueError(f"service rule {key!r} is not one or two upper-case letters")
        second = ord(key[1]) - 65 if len(key) == 2 else 26
        service_dest[(ord(key[0]) - 65) * 27 + second] = dest_of(d, f"service rule {key!r}")
    group_offsets = np.zeros(len(plan.destinations) + 1, np.int32)
    np.cumsum([len(d.chutes) for d in plan.destinations], out=group_offsets[1:])
    chutes = [c for d in plan.destinations for c in d.chutes]
    if any(not 0 < c <= MAX_CHUTE for c in chutes):
        raise ValueError("a destination names a chute outside 1..65535")
    policy = np.array([POLICIES.index(d.policy) for d in plan.destinations], np.uint8)
    special = {REASON_CODE[r]: plan.special.get(r, 0) for r in SPECIAL_REASONS}
    home = alpha2_to_numeric(plan.home_country)
    manifest = {}
    if plan.manifest is not None:
        keys, countries, pc_offsets, pc_data = _manifest_columns(plan.manifest, home)
        manifest = dict(manifest_keys=keys, manifest_countries=countries,
                        manifest_pc_offsets=pc_offsets, manifest_pc_data=pc_data)
    return _core.CompiledPlan(
        home_country=home, trie_children=children, trie_dest=trie_dest,
        country_dest=country_dest, service_dest=service_dest, group_offsets=group_offsets,
        group_chutes=np.array(chutes, np.uint16), policy=policy, special=special,
        recirculation_limit=plan.recirculation_limit, **manifest)


def chute_state_code(state: int | str) -> int:
    return CHUTE_STATES.index(state) if isinstance(state, str) else int(state)


class Router:
    """Routes event batches through the compiled core.

    Holds one plan at a time and the live state of every chute. `swap_plan` compiles the new
    plan first and then replaces the old one in one step, so every batch is routed entirely by
    one plan; chute states survive the swap, round-robin positions restart.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self._core = _core.RouterState(compile_plan(plan))

    def swap_plan(self, plan: Plan, compiled: _core.CompiledPlan | None = None) -> None:
        """Route the next batch by `plan`. Pass `compiled` when the plan was already compiled
        (e.g. in a background thread, so the line never waits for a big manifest)."""
        if compiled is None:
            compiled = compile_plan(plan)    # may raise: the running plan stays
        self._core.set_plan(compiled)
        self.plan = plan

    @property
    def core(self) -> _core.RouterState:
        """The compiled router (for compiled callers such as `sorter.engine._turn.EngineTurn`)."""
        return self._core

    def set_chute_state(self, chute: int, state: int | str) -> None:
        self._core.set_chute_state(chute, chute_state_code(state))

    def chute_state(self, chute: int) -> str:
        return CHUTE_STATES[self._core.chute_state(chute)]

    def route(self, batch: EventBatch, *, now_ns: int | None = None,
              deadline_ns: int = 0) -> Decisions:
        """One decision per event. With deadline_ns > 0, events scanned more than deadline_ns
        before now_ns (default: the wall clock) are decided `late`."""
        n = len(batch)
        out = Decisions(np.empty(n, np.uint16), np.empty(n, np.uint8), np.empty(n, np.int32))
        if deadline_ns > 0 and now_ns is None:
            now_ns = time.time_ns()
        self._core.route(batch.event_offsets, batch.read_offsets, batch.data,
                         batch.recirculations, batch.ts_ns, out.chute, out.reason,
                         out.destination, now_ns or 0, deadline_ns)
        return out

    def destination_name(self, dest: int) -> str | None:
        return self.plan.destinations[dest].name if dest >= 0 else None
