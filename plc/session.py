"""The telegram session, sans I/O: sequence numbers, acknowledgements, resends, life telegrams.

Both ends of a TCP telegram link run the same rules (docs/plc.md "TCP telegrams"):

- sort instructions (host -> PLC), sort reports and chute status (PLC -> host) each carry the
  sender's next sequence number and are acknowledged by the receiver with an `ack` telegram
  naming that number. At most `window` are unacknowledged at once; one unacknowledged for
  `ack_timeout_ms` is resent with the same number, at most `max_resends` times, then the link
  is declared down. A reconnect resends every unacknowledged telegram.
- a receiver that gets a sequence number it has already accepted (same number, same tracking
  id or chute) acknowledges it again and does not act on it again: a resend never doubles an
  instruction. The memory (`Seen`) can outlive the session, as a PLC's retentive data does.
- every `life_interval_ms` each side sends a life telegram with a counter; nothing received for
  `life_timeout_ms` marks the link down.

The host side (`HostSession`) also drops a decision older than `max_age_s` instead of sending or
resending it: a stale decision never reaches the PLC.

No sockets, no clock: every call is given `now` (seconds, monotonic). Outputs are polled:
`take_output()` (bytes to write), `take_events()` (what to log), and the received messages.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from .telegrams import Malformed, Telegram, TelegramCodec, TelegramSplitter

__all__ = ["Seen", "HostSession", "PlcSession", "Instruction"]

ACKED = ("sort_instruction", "sort_report", "chute_status")


class Seen:
    """The sequence numbers a receiver has accepted (the last `size`), with the tracking id or
    chute they carried, so that a resend is recognised."""

    def __init__(self, size: int = 65536):
        self.size = size
        # OrderedDict, not dict: evicting the oldest of a dict (next(iter(d))) gets slower and
        # slower as deleted slots pile up at its front
        self._keys: OrderedDict[tuple, None] = OrderedDict()

    def add(self, key: tuple) -> bool:
        """True when `key` is new (and remember it)."""
        keys = self._keys
        if key in keys:
            return False
        keys[key] = None
        if len(keys) > self.size:
            keys.popitem(last=False)
        return True


@dataclass(slots=True)
class Instruction:
    """A decision on its way to the PLC: what the sort instruction carries, and when the
    decision was made (`born`, on the session's clock) so that its age can be judged."""
    tracking_id: int
    chute: int
    alt_chute: int = 0
    reason: int = 0
    born: float = 0.0
    decision_seq: int = 0


@dataclass(slots=True)
class _Pending:
    type: str
    seq: int
    values: tuple          # the type's fields in MESSAGE_FIELDS order
    born: float | None
    data: bytes
    sent_at: float
    order: int             # send order (a resend moves it to the end)
    resends: int = 0


class _Session:
    """What both ends share; see the module docstring."""

    COUNTERS = ("telegrams_in", "telegrams_out", "bytes_in", "bytes_out", "malformed",
                "duplicates", "acks_in", "acks_out", "unknown_acks", "resends", "lives_in",
                "lives_out", "link_downs", "life_timeouts", "ack_timeouts", "connections")

    def __init__(self, codec: TelegramCodec, *, seen: Seen | None = None, first_seq: int = 1,
                 window: int | None = None, ack_timeout_s: float | None = None,
                 max_resends: int | None = None, life_interval_s: float | None = None,
                 life_timeout_s: float | None = None):
        s = codec.preset.session
        self.codec = codec
        self.splitter = TelegramSplitter(codec)
        self.window = int(window if window is not None else s["window"])
        self.ack_timeout_s = ack_timeout_s if ack_timeout_s is not None else s["ack_timeout_ms"] / 1000
        self.max_resends = int(max_resends if max_resends is not None else s["max_resends"])
        self.life_interval_s = (life_interval_s if life_interval_s is not None
                                else s["life_interval_ms"] / 1000)
        self.life_timeout_s = (life_timeout_s if life_timeout_s is not None
                               else s["life_timeout_ms"] / 1000)
        self.seen = seen if seen is not None else Seen(max(65536, 4 * self.window))
        self._mod = codec.seq_modulo
        self._next_seq = (first_seq % self._mod) or 1
        self._life_mod = self._field_modulo("life", "counter")
        self.life_counter = 0
        self.peer_life_counter: int | None = None
        self.queue: deque = deque()                  # (type, values, born) not yet sent
        self.in_flight: OrderedDict[int, _Pending] = OrderedDict()
        self.up = False
        self.down_reason: str | None = None
        self._out: list[bytes] = []
        self._events: list[tuple[str, dict]] = []
        self._last_rx = self._next_life = 0.0
        self._order = 0                 # send order of the last telegram sent
        self._max_acked = 0             # send order of the latest telegram acknowledged
        self._last_ack_at = 0.0
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)

    def _field_modulo(self, type_: str, name: str) -> int:
        lay = self.codec.preset.layouts[type_]
        f = next(f for f in lay.fields if f.name == name)
        return 10 ** f.size if not self.codec.binary else 1 << (8 * f.size)

    # -- link ------------------------------------------------------------------------------
    def connection_made(self, now: float) -> None:
        """A new connection: forget partial bytes, resend every unacknowledged telegram."""
        self.splitter.reset()
        self.up, self.down_reason = True, None
        self.counters["connections"] += 1
        self._last_rx = now
        self._next_life = now
        self._last_ack_at = now
        for p in list(self.in_flight.values()):
            self._resend(p, now, count=False)
        self._pump(now)

    def connection_lost(self, reason: str = "closed") -> None:
        if self.up:
            self.counters["link_downs"] += 1
            self._event("link down", reason=reason)
        self.up, self.down_reason = False, reason

    def _down(self, reason: str) -> None:
        self.connection_lost(reason)

    # -- input -----------------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> None:
        """Bytes received from the peer."""
        counters = self.counters
        counters["bytes_in"] += len(data)
        self._last_rx = now
        in_flight, pack, seen, receives = self.in_flight, self.codec.pack, self.seen, self.RECEIVES
        out = self._out
        items = self.splitter.feed(data)
        n_in = n_acks = n_acks_out = n_direct = acks_bytes = 0
        max_acked = self._max_acked
        direct = not getattr(self, "drop_acks", None)       # the tests' lost-ack hook is off
        for item in items:
            if item.__class__ is Malformed:
                counters["malformed"] += 1
                self._event("malformed telegram", reason=item.reason, data=item.data[:64].hex())
                continue
            n_in += 1
            t = item.type
            if t == "ack":
                n_acks += 1
                p = in_flight.pop(item.fields["ack_seq"], None)
                if p is None:
                    counters["unknown_acks"] += 1
                else:
                    self._last_ack_at = now
                    if p.order > max_acked:
                        max_acked = p.order
                    self._acked(p)
            elif t == "life":
                counters["lives_in"] += 1
                self.peer_life_counter = item.fields["counter"]
            elif t in receives:
                ack = pack("ack", 0, (item.seq,))
                if direct:
                    out.append(ack)
                    acks_bytes += len(ack)
                    n_direct += 1
                else:
                    self._send_raw(ack)
                n_acks_out += 1
                f = item.fields
                if seen.add((t, item.seq, f.get("tracking_id", f.get("chute")))):
                    self._received(item)
                else:
                    counters["duplicates"] += 1
                    self._event("duplicate telegram", type=t, seq=item.seq)
            else:
                counters["malformed"] += 1
                self._event("unexpected telegram", type=t, seq=item.seq)
        self._max_acked = max_acked
        counters["telegrams_in"] += n_in
        counters["acks_in"] += n_acks
        counters["acks_out"] += n_acks_out
        counters["telegrams_out"] += n_direct
        counters["bytes_out"] += acks_bytes
        self._pump(now)

    def tick(self, now: float) -> None:
        """Timers: life telegrams, resends, life timeout."""
        if not self.up:
            return
        if now - self._last_rx > self.life_timeout_s:
            self.counters["life_timeouts"] += 1
            self._down("life_timeout")
            return
        if now >= self._next_life:
            self._next_life = now + self.life_interval_s
            self.life_counter = (self.life_counter + 1) % self._life_mod
            self._send_raw(self.codec.pack("life", 0, (self.life_counter,)))
            self.counters["lives_out"] += 1
        # A telegram is overdue when unacknowledged for ack_timeout AND either a telegram sent
        # after it has been acknowledged (its ack was lost: acks come in order) or no ack at
        # all came for ack_timeout (the peer is stuck). A peer that is merely busy working
        # through a full window keeps acknowledging, and is not flooded with resends.
        T = self.ack_timeout_s
        stuck = now - self._last_ack_at >= T
        for p in list(self.in_flight.values()):
            if now - p.sent_at < T or not (stuck or p.order < self._max_acked):
                break
            if p.resends >= self.max_resends:
                self.counters["ack_timeouts"] += 1
                self._down("ack_timeout")
                return
            self._resend(p, now)
        self._pump(now)

    def next_timer(self, now: float) -> float:
        """Seconds until `tick` has something to do (for the shell's poll timeout)."""
        if not self.up:
            return 1.0
        t = min(self._next_life, self._last_rx + self.life_timeout_s)
        if self.in_flight:
            t = min(t, next(iter(self.in_flight.values())).sent_at + self.ack_timeout_s)
        return max(0.0, t - now)

    # -- output ----------------------------------------------------------------------------
    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def take_events(self) -> list[tuple[str, dict]]:
        out, self._events = self._events, []
        return out

    def _event(self, name: str, **fields: Any) -> None:
        self._events.append((name, fields))

    def _send_raw(self, data: bytes) -> None:
        self._out.append(data)
        self.counters["telegrams_out"] += 1
        self.counters["bytes_out"] += len(data)

    def _pump(self, now: float) -> None:
        """Send queued telegrams while the link is up and the window has room."""
        queue, in_flight, window = self.queue, self.in_flight, self.window
        if not (queue and self.up and len(in_flight) < window):
            return
        pack, fresh, mod, out = self.codec.pack, self._fresh, self._mod, self._out
        seq, order, nbytes, n = self._next_seq, self._order, 0, 0
        while queue and len(in_flight) < window:
            type_, values, born = queue.popleft()
            if born is not None and not fresh(type_, values, born, now):
                continue
            data = pack(type_, seq, values)
            order += 1
            in_flight[seq] = _Pending(type_, seq, values, born, data, now, order)
            out.append(data)
            nbytes += len(data)
            n += 1
            seq = (seq + 1) % mod or 1
        self._next_seq, self._order = seq, order
        self.counters["telegrams_out"] += n
        self.counters["bytes_out"] += nbytes

    def _resend(self, p: _Pending, now: float, count: bool = True) -> None:
        if not self._fresh(p.type, p.values, p.born, now):
            del self.in_flight[p.seq]
            return
        if count:
            p.resends += 1
            self.counters["resends"] += 1
            self._event("resend", type=p.type, seq=p.seq, resends=p.resends)
        p.sent_at = now
        self._order += 1
        p.order = self._order
        self.in_flight.move_to_end(p.seq)
        self._send_raw(p.data)

    # overridden by the two ends
    RECEIVES: tuple[str, ...] = ()

    def _fresh(self, type_: str, values: tuple, born: float | None, now: float) -> bool:
        return True

    def _received(self, t: Telegram) -> None:
        raise NotImplementedError

    def _acked(self, p: _Pending) -> None:
        pass


class HostSession(_Session):
    """The gateway's end: sends sort instructions, receives sort reports and chute status.

    `submit(instruction, now)` queues a decision; `take_reports()` -> [(tracking_id, chute,
    outcome)], `take_chute_states()` -> [(chute, state)]; `stale` counts decisions dropped
    because they were older than `max_age_s` (None: no limit) when their turn to be sent (or
    resent) came."""

    RECEIVES = ("sort_report", "chute_status")
    COUNTERS = _Session.COUNTERS + ("instructions", "instructions_acked", "stale_dropped",
                                    "reports", "chute_states")

    def __init__(self, codec: TelegramCodec, *, max_age_s: float | None = None, **kw):
        super().__init__(codec, **kw)
        self.max_age_s = max_age_s
        self._reports: list[tuple[int, int, int]] = []
        self._states: list[tuple[int, int]] = []

    def submit(self, ins: Instruction, now: float) -> None:
        self.submit_many([ins], now)

    def submit_many(self, items: list[Instruction], now: float) -> None:
        self.queue.extend([("sort_instruction", (i.tracking_id, i.chute, i.alt_chute, i.reason),
                            i.born) for i in items])
        self.counters["instructions"] += len(items)
        self._pump(now)

    def expire(self, now: float) -> None:
        """Drop stale decisions waiting in the queue (while the link is down, say)."""
        if self.max_age_s is None:
            return
        while self.queue and not self._fresh(*self.queue[0], now):
            self.queue.popleft()

    def _fresh(self, type_, values, born, now) -> bool:
        if self.max_age_s is None or born is None or now - born <= self.max_age_s:
            return True
        self.counters["stale_dropped"] += 1
        self._event("stale decision dropped", tracking_id=values[0], chute=values[1],
                    age_ms=round((now - born) * 1000, 1),
                    max_age_ms=round(self.max_age_s * 1000, 1))
        return False

    def _received(self, t: Telegram) -> None:
        if t.type == "sort_report":
            self.counters["reports"] += 1
            self._reports.append((t.fields["tracking_id"], t.fields["chute"], t.fields["outcome"]))
        else:
            self.counters["chute_states"] += 1
            self._states.append((t.fields["chute"], t.fields["state"]))

    def _acked(self, p: _Pending) -> None:
        self.counters["instructions_acked"] += 1

    def take_reports(self) -> list[tuple[int, int, int]]:
        out, self._reports = self._reports, []
        return out

    def take_chute_states(self) -> list[tuple[int, int]]:
        out, self._states = self._states, []
        return out

    @property
    def waiting(self) -> int:
        """Decisions queued or unacknowledged."""
        return len(self.queue) + len(self.in_flight)


class PlcSession(_Session):
    """The PLC's end (for the simulated PLC and the tests): receives sort instructions,
    sends sort reports and chute status. `take_instructions()` -> [Telegram]."""

    RECEIVES = ("sort_instruction",)
    COUNTERS = _Session.COUNTERS + ("instructions", "reports", "chute_states")

    def __init__(self, codec: TelegramCodec, **kw):
        super().__init__(codec, **kw)
        self._instructions: list[Telegram] = []
        self.drop_acks: set[int] = set()      # tests: seqs whose first ack is "lost"

    def _received(self, t: Telegram) -> None:
        self.counters["instructions"] += 1
        self._instructions.append(t)

    def _send_raw(self, data: bytes) -> None:
        if self.drop_acks:
            item = self.codec.decode(data[1:-1] if not self.codec.binary else data)
            if isinstance(item, Telegram) and item.type == "ack" and item.fields["ack_seq"] in self.drop_acks:
                self.drop_acks.discard(item.fields["ack_seq"])
                self._event("ack dropped on purpose", ack_seq=item.fields["ack_seq"])
                return
        super()._send_raw(data)

    def take_instructions(self) -> list[Telegram]:
        out, self._instructions = self._instructions, []
        return out

    def report(self, tracking_id: int, chute: int, outcome: int, now: float) -> None:
        self.counters["reports"] += 1
        self.queue.append(("sort_report", (tracking_id, chute, outcome), None))
        self._pump(now)

    def report_many(self, items: list[tuple[int, int, int]], now: float) -> None:
        """Sort reports (tracking_id, chute, outcome), in order."""
        self.counters["reports"] += len(items)
        self.queue.extend([("sort_report", r, None) for r in items])
        self._pump(now)

    def chute_status(self, chute: int, state: int, now: float) -> None:
        self.counters["chute_states"] += 1
        self.queue.append(("chute_status", (chute, state), None))
        self._pump(now)
