"""Parcels consistent with a sort plan: the labels a scanner tunnel would see on them.

Every parcel is a pure function of (seed, parcel id): the same seed gives the same parcels in
any order, whatever else the simulation does. Each carries the destination the plan gives its
labels (`expected_destination`, computed by the reference router, `sorter.core.reference`), so a
test or the PLC simulator can check every `sorted` decision against it.

Label kinds (what is printed on the parcel):

    s10_advised    an S10 item id with pre-advice (a manifest row of the plan)
    sscc_advised   a GS1-128 SSCC with pre-advice:        ]C1 00 <sscc>
    gs1_420        a GS1-128 label, domestic:              ]C1 00 <sscc> GS 420 <postcode>
    gs1_421        a GS1-128 label, international:         ]C1 00 <sscc> GS 421 <iso numeric> <postcode>
    postcode_old   a bare 6-digit postcode                  050010
    postcode_new   a bare new-format postcode               A05 K8X7 / A05K8X7
    ems            an S10 whose service indicator has a service rule (EMS)
    unknown        valid codes that resolve to no destination (an unadvised S10, a country
                   without a rule)
    damaged        a label that cannot be read right (bad check digit, truncated)

A multi-label parcel carries a second label that agrees with the first (the same address as a
bare postcode or GS1 420, or an unadvised S10 item id, which never blocks the other label).
A scan (`scan_slots`) reads the labels per the read rate: nothing at all (no read), or each
label, where a label of a multi-label parcel may be missed (None: a local no read).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from sorter.core.barcodes import gs1_check_digit, s10_check_digit
from sorter.core.codes import REASONS
from sorter.core.countries import alpha2_to_numeric
from sorter.plan import Plan
from sorter.core.reference import ReferenceRouter

from .model import Parcel

__all__ = ["Population", "DEFAULT_MIX", "LABEL_KINDS", "GS"]

GS = b"\x1d"
LABEL_KINDS = ("s10_advised", "sscc_advised", "gs1_420", "gs1_421", "postcode_old",
               "postcode_new", "ems", "unknown", "damaged")
DEFAULT_MIX = {"s10_advised": 0.25, "sscc_advised": 0.05, "gs1_420": 0.15, "gs1_421": 0.10,
               "postcode_old": 0.15, "postcode_new": 0.22, "ems": 0.08}
_ALNUM = string.ascii_uppercase + string.digits
_SERVICES = ("RR", "CP", "LX", "UA", "RA", "CD", "LA", "VV", "HB")   # ordinary S10 services
_ORIGINS = ("CN", "DE", "US", "RU", "GB", "TR", "KR")
# Countries a plan is unlikely to route (chosen from those without a country rule).
_FAR_COUNTRIES = ("AU", "NZ", "ZA", "AR", "CL", "MX", "EG", "NG", "KE", "PE", "IS", "PT")
_TRIES = 50


@dataclass(frozen=True)
class _Made:
    labels: list[bytes]
    kind: str
    text: str
    postcode: bytes | None = None      # the domestic address, when the label gives one


class Population:
    """Makes parcels for `plan`. Rates are probabilities per parcel (damaged and unknown are
    drawn first; the rest of the parcels are sortable, by `mix`); read_rate is per scan."""

    def __init__(self, plan: Plan, *, seed: int = 0, read_rate: float = 0.985,
                 multi_label_rate: float = 0.05, damaged_rate: float = 0.01,
                 unknown_rate: float = 0.02, label_miss_rate: float = 0.1,
                 mix: dict[str, float] | None = None):
        for name, rate in (("read_rate", read_rate), ("multi_label_rate", multi_label_rate),
                           ("damaged_rate", damaged_rate), ("unknown_rate", unknown_rate),
                           ("label_miss_rate", label_miss_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {rate}")
        if damaged_rate + unknown_rate > 1.0:
            raise ValueError("damaged_rate + unknown_rate must not exceed 1")
        self.plan = plan
        self.seed = seed
        self.read_rate = read_rate
        self.multi_label_rate = multi_label_rate
        self.damaged_rate = damaged_rate
        self.unknown_rate = unknown_rate
        self.label_miss_rate = label_miss_rate
        self._router = ReferenceRouter(plan)
        self._names = [d.name for d in plan.destinations]
        self._home = plan.home_country
        self.labels: dict[int, list[bytes]] = {}
        self.kinds: dict[int, str] = {}

        # what the plan offers
        self._digit_prefixes = [p for p in plan.postcode_rules if p.isdigit() and len(p) <= 6]
        self._letter_prefixes = [p for p in plan.postcode_rules if _new_prefix_ok(p)]
        advised = plan.manifest.column("item_id").to_pylist() if plan.manifest is not None else []
        self._advised_s10 = [i for i in advised if len(i) == 13 and self._dest([i.encode()])]
        self._advised_sscc = [i for i in advised if len(i) == 18
                              and self._dest([b"]C100" + i.encode()])]
        self._manifest_items = set(advised)
        self._advised_postcode: dict[str, bytes] = {}
        if plan.manifest is not None:
            rows = plan.manifest.select(["item_id", "postcode", "country"]).to_pydict()
            for item, pc, country in zip(rows["item_id"], rows["postcode"], rows["country"]):
                pc = (pc or "").replace(" ", "")
                if country in (None, self._home) and (
                        (len(pc) == 6 and pc.isdigit()) or (len(pc) == 7 and _new_prefix_ok(pc))):
                    self._advised_postcode.setdefault(item, pc.encode())
        self._foreign = [c for c in plan.country_rules if c != self._home]
        self._services = [s for s in plan.service_rules if s[0] not in "JKSTW"]
        self._far = [c for c in _FAR_COUNTRIES if c not in plan.country_rules and c != self._home]
        possible = {
            "s10_advised": bool(self._advised_s10), "sscc_advised": bool(self._advised_sscc),
            "gs1_420": bool(self._digit_prefixes or self._letter_prefixes),
            "gs1_421": bool(self._foreign),
            "postcode_old": bool(self._digit_prefixes),
            "postcode_new": bool(self._letter_prefixes), "ems": bool(self._services),
        }
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(DEFAULT_MIX)
        if unknown:
            raise ValueError(f"unknown label kinds in mix: {', '.join(sorted(unknown))}")
        self.mix = {k: w for k, w in mix.items() if w > 0 and possible[k]}
        if not self.mix and damaged_rate + unknown_rate < 1.0:
            raise ValueError("the plan offers none of the label kinds in the mix")

    # -- the reference -------------------------------------------------------------------------
    def _decide(self, reads: list[bytes]) -> tuple[str, str | None]:
        _chute, reason, dest = self._router.decide(reads)
        return REASONS[reason], (self._names[dest] if dest >= 0 else None)

    def _dest(self, reads: list[bytes]) -> str | None:
        return self._decide(reads)[1]

    def expected_destination(self, labels: list[bytes]) -> str | None:
        """Where the plan sends a parcel whose labels are all read (None: it cannot sort)."""
        return self._dest(labels) if labels else None

    # -- parcels ------------------------------------------------------------------------------
    def make(self, parcel_id: int) -> Parcel:
        """The parcel with this id (the same for the same seed), its reads being one scan."""
        rng = random.Random(f"{self.seed}/parcel/{parcel_id}")
        made = self._make(rng)
        self.labels[parcel_id] = made.labels
        self.kinds[parcel_id] = made.kind
        slots = self.scan_slots(parcel_id, 0)
        return Parcel(parcel_id=parcel_id, reads=[s for s in slots if s is not None],
                      label=made.text, expected_destination=self.expected_destination(made.labels))

    def alias(self, parcel_id: int, new_id: int) -> None:
        """Give parcel `parcel_id`'s labels to `new_id` too (a parcel renumbered on a rescan)."""
        self.labels[new_id] = self.labels[parcel_id]
        self.kinds[new_id] = self.kinds[parcel_id]

    def scan_slots(self, parcel_id: int, pass_no: int) -> list[bytes | None]:
        """One scan of the parcel: [] for a no read, else one slot per label (None: missed)."""
        labels = self.labels[parcel_id]
        rng = random.Random(f"{self.seed}/scan/{parcel_id}/{pass_no}")
        if rng.random() >= self.read_rate or not labels:
            return []
        slots: list[bytes | None] = list(labels)
        if len(labels) > 1:
            for i in range(len(slots)):
                if rng.random() < self.label_miss_rate:
                    slots[i] = None
            if all(s is None for s in slots):
                i = rng.randrange(len(slots))
                slots[i] = labels[i]
        return slots

    def parcels(self, n: int, first_id: int = 1) -> list[Parcel]:
        return [self.make(i) for i in range(first_id, first_id + n)]

    def _make(self, rng: random.Random) -> _Made:
        r = rng.random()
        if r < self.damaged_rate:
            return self._damaged(rng)
        if r < self.damaged_rate + self.unknown_rate or not self.mix:
            return self._unknown(rng)
        kind = rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        made = self._sortable(kind, rng)
        if rng.random() < self.multi_label_rate:
            made = self._second_label(made, rng)
        return made

    # -- label kinds ----------------------------------------------------------------------------
    def _sortable(self, kind: str, rng: random.Random) -> _Made:
        if kind == "s10_advised":
            item = rng.choice(self._advised_s10)
            return _Made([item.encode()], kind, f"S10 {item}, pre-advised",
                         self._advised_postcode.get(item))
        if kind == "sscc_advised":
            item = rng.choice(self._advised_sscc)
            return _Made([b"]C100" + item.encode()], kind, f"GS1-128 SSCC {item}, pre-advised",
                         self._advised_postcode.get(item))
        if kind == "gs1_420":
            pc = self._postcode(rng, space=False)
            return _Made([b"]C100" + _sscc(rng) + GS + b"420" + pc], kind,
                         f"GS1-128 ship-to postcode {pc.decode()}", pc)
        if kind == "gs1_421":
            country = rng.choice(self._foreign)
            pc = "".join(rng.choices(string.digits, k=rng.randint(4, 6)))
            num = f"{alpha2_to_numeric(country):03d}"
            return _Made([b"]C100" + _sscc(rng) + GS + b"421" + (num + pc).encode()], kind,
                         f"GS1-128 ship-to {country} {pc}")
        if kind == "postcode_old":
            pc = self._old_postcode(rng)
            return _Made([pc], kind, f"postcode {pc.decode()}", pc)
        if kind == "postcode_new":
            pc = self._new_postcode(rng, space=rng.random() < 0.5)
            return _Made([pc], kind, f"postcode {pc.decode()}", pc.replace(b" ", b""))
        if kind == "ems":
            service = rng.choice(self._services)
            if len(service) == 1:
                service += rng.choice(string.ascii_uppercase)
            item = _s10(rng, service, rng.choice(_ORIGINS))
            return _Made([item], kind, f"S10 {item.decode()}, service {service}")
        raise ValueError(kind)

    def _unknown(self, rng: random.Random) -> _Made:
        for _ in range(_TRIES):
            if self._far and rng.random() < 0.4:
                country = rng.choice(self._far)
                num = f"{alpha2_to_numeric(country):03d}"
                pc = "".join(rng.choices(string.digits, k=4))
                labels = [b"]C100" + _sscc(rng) + GS + b"421" + (num + pc).encode()]
                text = f"GS1-128 ship-to {country} (no rule)"
            else:
                item = self._unadvised_s10(rng)
                labels, text = [item], f"S10 {item.decode()}, no pre-advice"
            if self._decide(labels)[0] == "unknown_destination":
                return _Made(labels, "unknown", text)
        raise RuntimeError("cannot make an unknown-destination parcel for this plan")

    def _damaged(self, rng: random.Random) -> _Made:
        for _ in range(_TRIES):
            how = rng.choice(("s10_check", "sscc_check", "truncated_postcode", "truncated_s10"))
            if how == "s10_check":
                good = self._unadvised_s10(rng)
                label = good[:10] + str((int(good[10:11]) + rng.randint(1, 9)) % 10).encode() + good[11:]
                text = f"S10 {label.decode()}, wrong check digit"
            elif how == "sscc_check":
                good = _sscc(rng)
                label = b"]C100" + good[:17] + str((int(good[17:]) + rng.randint(1, 9)) % 10).encode()
                text = "GS1-128 SSCC, wrong check digit"
            elif how == "truncated_postcode" and (self._digit_prefixes or self._letter_prefixes):
                pc = self._postcode(rng, space=False)
                label = pc[:-1]
                text = f"postcode {label.decode()}, truncated"
            else:
                label = self._unadvised_s10(rng)[:-1]
                text = f"S10 {label.decode()}, truncated"
            if self._decide([label])[0] == "invalid":
                return _Made([label], "damaged", text)
        raise RuntimeError("cannot make a damaged label for this plan")

    def _second_label(self, made: _Made, rng: random.Random) -> _Made:
        """Add a label that agrees on its own: the same address in another form (a bare
        postcode, a GS1 420 label), or an unadvised S10 item id, which resolves to nothing and
        so never blocks the other label. Either label alone routes the same way or not at all."""
        dest = self._dest(made.labels)
        candidates = []
        pc = made.postcode
        if pc is not None:
            if made.kind != "postcode_old" and made.kind != "postcode_new":
                candidates.append(pc[:3] + b" " + pc[3:] if len(pc) == 7 and rng.random() < 0.5
                                  else pc)
            if made.kind != "gs1_420":
                candidates.append(b"]C100" + _sscc(rng) + GS + b"420" + pc)
            rng.shuffle(candidates)
        candidates.append(self._unadvised_s10(rng))
        for extra in candidates:
            if self._dest([extra]) not in (dest, None):
                continue
            labels = made.labels + [extra]
            rng.shuffle(labels)
            if self._dest(labels) == dest:
                return _Made(labels, made.kind, made.text + f" + {_show(extra)}", made.postcode)
        return made

    # -- codes -----------------------------------------------------------------------------------
    def _unadvised_s10(self, rng: random.Random) -> bytes:
        while True:
            service = rng.choice(_SERVICES)
            if service in self.plan.service_rules or service[0] in self.plan.service_rules:
                continue
            item = _s10(rng, service, rng.choice(_ORIGINS))
            if item.decode() not in self._manifest_items:
                return item

    def _postcode(self, rng: random.Random, space: bool) -> bytes:
        pick_old = self._digit_prefixes and (not self._letter_prefixes or rng.random() < 0.45)
        return self._old_postcode(rng) if pick_old else self._new_postcode(rng, space)

    def _old_postcode(self, rng: random.Random) -> bytes:
        p = rng.choice(self._digit_prefixes)
        return (p + "".join(rng.choices(string.digits, k=6 - len(p)))).encode()

    def _new_postcode(self, rng: random.Random, space: bool) -> bytes:
        p = rng.choice(self._letter_prefixes)
        out = list(p)
        while len(out) < 7:
            out.append(rng.choice(string.digits if len(out) in (1, 2) else _ALNUM))
        code = "".join(out)
        return (code[:3] + " " + code[3:] if space else code).encode()


def _new_prefix_ok(p: str) -> bool:
    """Whether a postcode prefix can start a new-format code [A-Z][0-9]{2}[A-Z0-9]{4}."""
    if not p or len(p) > 7 or not p[0].isalpha() or not p[0].isupper():
        return False
    return all(c.isdigit() for c in p[1:3]) and all(c in _ALNUM for c in p[3:])


def _s10(rng: random.Random, service: str, origin: str) -> bytes:
    serial = f"{rng.randrange(10**8):08d}"
    return f"{service}{serial}{s10_check_digit(serial)}{origin}".encode()


def _sscc(rng: random.Random) -> bytes:
    body = f"{rng.randrange(10**17):017d}"
    return f"{body}{gs1_check_digit(body)}".encode()


def _show(code: bytes) -> str:
    return code.replace(GS, b"<GS>").decode("latin-1")
