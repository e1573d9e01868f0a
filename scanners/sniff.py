"""`sorter scanner --sniff`: watch a live scanner's telegrams with no engine, to check a preset
before the line runs (docs/scanners.md, "When reads look wrong").

For every telegram it prints the bytes as they came (escaped: `<STX>`, `<CR><LF>`...), how the
preset parses them, what the SCAN event would carry, and every sign that the preset does not fit
(`MISMATCH_KINDS`). Without a preset it feeds the stream to every bundled preset side by side
and proposes the closest one.

`Sniffer` is sans I/O (bytes in, text lines out); `SniffSession` puts it on the driver's link
handling (TCP client, TCP server, serial port) in place of the engine.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

from sorter import wire

from .driver import OWN_ID_BASE, ScannerDriver, index_parcel_id
from .framing import (Anomaly, Frame, FrameSplitter, Telegram, TelegramFormat, encode_escapes,
                      load_format, parse_frame, preset_names, salvage_index)

__all__ = ["Report", "PresetTrial", "Sniffer", "SniffSession", "OLDER_NAMES"]

# Bundled presets kept under an older name beside a clearer one for the same telegram: proposed
# only after the clearer name.
OLDER_NAMES = frozenset({"cognex_dataman"})          # = cognex_dataman_formatted


@dataclass
class Report:
    """One item of the stream as one preset sees it."""
    raw: bytes                          # the bytes as on the wire (a frame with its start and stop)
    kind: str                           # "telegram", "heartbeat", or an Anomaly kind
    telegram: Telegram | None = None
    anomaly: Anomaly | None = None
    parcel_id: int | None = None        # the SCAN event's parcel id (None: no event)
    own_id: bool = False                # given by the driver's counter, not the telegram
    reads: list[bytes] | None = None    # the SCAN event's reads (None: no event)
    dropped: int = 0                    # reads over the wire limits
    mismatches: tuple[tuple[str, str], ...] = ()

    @property
    def is_event(self) -> bool:
        return self.reads is not None


@dataclass
class PresetTrial:
    """One preset fed the whole stream, with a score of how well it fits."""
    fmt: TelegramFormat
    scanner_id: int = 1
    first_parcel_id: int | None = None
    splitter: FrameSplitter = field(init=False)
    telegrams: int = 0                  # parsed telegrams (heartbeats not included)
    clean: int = 0                      # of those, without a mismatch
    mismatched: int = 0
    anomalies: int = 0                  # garbage, empty, oversized, unterminated, truncated, unparseable
    evidence: int = 0                   # bytes and fields the preset explains (see _evidence)
    mismatch_counts: dict[str, int] = field(default_factory=dict)
    _last_index: int | None = None

    def __post_init__(self) -> None:
        self.splitter = FrameSplitter(self.fmt, report_skipped=True)
        if self.first_parcel_id is None:
            self.first_parcel_id = ((OWN_ID_BASE | (self.scanner_id << 40) | 1)
                                    if self.fmt.has_index else 1)
        self._next_own = self.first_parcel_id

    @property
    def lenient(self) -> bool:
        """Takes a terminator that may be missing: a stricter preset is proposed first."""
        return bool(self.fmt.terminator) and not self.fmt.terminator_required

    def rank(self) -> tuple:
        """Sort key, best first: a preset that framed nothing cleanly is last; then fewer
        mismatches and anomalies, more clean telegrams, more evidence, strict before lenient."""
        bad = self.mismatched + self.anomalies
        return (self.clean == 0, bad, -self.clean, -self.evidence, self.lenient,
                self.fmt.name in OLDER_NAMES, self.fmt.name)

    def feed(self, data: bytes) -> list[Report]:
        return [self._report(item) for item in self.splitter.feed(data)]

    def close(self) -> list[Report]:
        """End of one connection: an open frame is truncated; a new connection starts afresh."""
        return [self._report(item) for item in self.splitter.close()]

    def _own(self) -> int:
        pid, self._next_own = self._next_own, self._next_own + 1
        return pid

    def _event(self, report: Report, index: str | None, reads: list[bytes]) -> None:
        pid = index_parcel_id(self.fmt, index)
        report.own_id = pid is None
        report.parcel_id = self._own() if pid is None else pid
        ok = [r for r in reads if len(r) <= wire.MAX_READ_LEN][:wire.MAX_READS]
        report.dropped = len(reads) - len(ok)
        report.reads = ok

    def _report(self, item: Frame | Anomaly) -> Report:
        fmt = self.fmt
        if isinstance(item, Anomaly):
            if item.kind == "skipped":
                self.evidence += len(item.data)
                return Report(item.data, "skipped", anomaly=item)
            raw = item.data if item.kind == "garbage" else fmt.start + item.data
            report = Report(raw, item.kind, anomaly=item)
            self.anomalies += 1
            if item.is_parcel:
                self._event(report, salvage_index(fmt, item.data), [])
            return report
        raw = fmt.start + item.body + fmt.stop
        parsed = parse_frame(fmt, item)
        if isinstance(parsed, Anomaly):
            self.anomalies += 1
            report = Report(raw, parsed.kind, anomaly=parsed,
                            mismatches=((parsed.mismatch, parsed.detail),) if parsed.mismatch else ())
            self._count(report.mismatches)
            self._event(report, salvage_index(fmt, item.body), [])
            return report
        if parsed.heartbeat:
            return Report(raw, "heartbeat", telegram=parsed)
        report = Report(raw, "telegram", telegram=parsed, mismatches=parsed.mismatches)
        self.telegrams += 1
        if parsed.mismatches:
            self.mismatched += 1
            self._count(parsed.mismatches)
        else:
            self.clean += 1
            self.evidence += self._evidence(item.body, parsed)
        self._event(report, parsed.index, parsed.reads)
        return report

    def _count(self, mismatches) -> None:
        for kind, _ in mismatches:
            self.mismatch_counts[kind] = self.mismatch_counts.get(kind, 0) + 1

    def _evidence(self, body: bytes, t: Telegram) -> int:
        """What of a clean telegram the preset explains beyond "some bytes": its start and stop
        characters, header and terminator, an exact no-read string, an index that counts up."""
        fmt = self.fmt
        n = len(fmt.start) + len(fmt.stop)
        if fmt.header and body.startswith(fmt.header):
            n += len(fmt.header)
        if fmt.terminator and body.endswith(fmt.terminator):
            n += len(fmt.terminator)
        if t.no_read:
            n += 1
        if t.index is not None and t.index.isdigit():
            index = int(t.index)
            if self._last_index is not None and index == self._last_index + 1:
                n += 1
            self._last_index = index
        return n


def _show(data: bytes, limit: int = 400) -> str:
    text = encode_escapes(data[:limit])
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def render(report: Report, number: int, fmt: TelegramFormat, scanner_id: int) -> list[str]:
    """The lines printed for one report."""
    if report.kind == "skipped":
        return [f"      between   {_show(report.raw)}   (skipped: the preset's ignore_between)"]
    lines = []
    head = f"[{number}]" if report.is_event else "   "
    lines.append(f"{head:<6}raw       {_show(report.raw)}")
    t = report.telegram
    if report.kind == "heartbeat":
        lines.append("      parsed    heartbeat (keep-alive, no parcel)")
    elif t is not None:
        parts = []
        if fmt.has_index:
            parts.append(f"index {t.index if t.index is not None else '(none)'}")
        if t.status is not None:
            parts.append(f"status {t.status}")
        if t.count is not None:
            parts.append(f"count {t.count}")
        if t.gate_ms is not None:
            parts.append(f"gate {t.gate_ms} ms")
        if t.no_read:
            parts.append("no read")
        elif t.reads:
            parts.append("codes " + "  ".join(_show(r) for r in t.reads))
        else:
            parts.append("no code")
        if t.partial:
            parts.append(f"{t.partial} failed slot(s)")
        for w in t.warnings:
            parts.append(f"warning {w}")
        lines.append("      parsed    " + "; ".join(parts))
    else:
        a = report.anomaly
        lines.append(f"      parsed    {a.kind}: {a.detail}")
    if report.is_event:
        reads = "  ".join(_show(r) for r in report.reads) if report.reads else "none (no read)"
        source = "driver's counter" if report.own_id else "telegram index"
        extra = f"; {report.dropped} read(s) over the wire limits dropped" if report.dropped else ""
        lines.append(f"      SCAN      parcel_id {report.parcel_id} ({source}), scanner {scanner_id}"
                     f", reads {reads}{extra}")
    else:
        lines.append("      SCAN      none (not a parcel)")
    for kind, detail in report.mismatches:
        lines.append(f"      MISMATCH  {kind}: {detail}")
    return lines


class Sniffer:
    """Bytes in, text lines out. With a preset: that preset's view of every telegram. Without:
    every bundled preset is tried side by side; the telegrams are shown as the closest one sees
    them, and `proposal()` names it."""

    def __init__(self, fmt: TelegramFormat | None = None, scanner_id: int = 1,
                 first_parcel_id: int | None = None):
        self.fmt = fmt
        self.scanner_id = scanner_id
        formats = [fmt] if fmt is not None else [load_format(n) for n in preset_names()]
        self.trials = [PresetTrial(f, scanner_id, first_parcel_id) for f in formats]
        self.events = 0             # SCAN events of the shown preset
        self._shown: str | None = None

    @property
    def proposing(self) -> bool:
        return self.fmt is None

    def ranking(self) -> list[PresetTrial]:
        return sorted(self.trials, key=PresetTrial.rank)

    def proposal(self) -> PresetTrial | None:
        """The closest bundled preset so far (None until one framed a clean telegram)."""
        best = self.ranking()[0]
        return None if best.clean == 0 else best

    def feed(self, data: bytes) -> list[str]:
        return self._lines([t.feed(data) for t in self.trials])

    def close(self) -> list[str]:
        return self._lines([t.close() for t in self.trials])

    def _lines(self, reports: list[list[Report]]) -> list[str]:
        by_name = {t.fmt.name: r for t, r in zip(self.trials, reports)}
        lead = self.trials[0] if not self.proposing else (self.proposal() or self.ranking()[0])
        out = []
        if self.proposing and self.proposal() is not None and lead.fmt.name != self._shown:
            self._shown = lead.fmt.name
            out.append(f"== closest bundled preset so far: {lead.fmt.name}  "
                       f"{lead.fmt.describe()}  (telegrams below as it sees them)")
        for report in by_name[lead.fmt.name]:
            if report.is_event:
                self.events += 1
            out += render(report, self.events, lead.fmt, self.scanner_id)
        return out

    def summary(self) -> list[str]:
        """The closing lines: counts for the preset, or the ranking and the proposal."""
        if not self.proposing:
            t = self.trials[0]
            lines = [f"== {t.fmt.name}: {t.telegrams} telegram(s), {t.clean} clean, "
                     f"{t.mismatched} with mismatches, {t.anomalies} anomalies"]
            for kind, n in sorted(t.mismatch_counts.items()):
                lines.append(f"   mismatch {kind}: {n}")
            if t.mismatched:
                lines.append("   the preset does not fit this scanner: run --sniff without "
                             "--preset for a proposal, or see docs/scanners.md")
            return lines
        ranked = [t for t in self.ranking() if t.telegrams or t.anomalies]
        lines = ["== presets tried (best first): telegrams, clean, mismatched, anomalies"]
        for t in ranked[:6]:
            lines.append(f"   {t.fmt.name:<26} {t.telegrams:>5} {t.clean:>5} {t.mismatched:>5} "
                         f"{t.anomalies:>5}   {t.fmt.describe()}")
        best = self.proposal()
        if best is None:
            lines.append("== no bundled preset fits: write one (docs/scanners.md, Presets)")
            return lines
        lines.append(f"== proposed preset: {best.fmt.name}")
        same = [t.fmt.name for t in ranked[1:] if t.rank()[:3] == best.rank()[:3]]
        if same:
            lines.append(f"   parse the stream as well: {', '.join(same)} (a no-read telegram "
                         "or a few consecutive indexes tell them apart)")
        if best.mismatched:
            lines.append("   even the closest preset does not fit every telegram: copy it and "
                         "change it (docs/scanners.md, Presets)")
        if best.anomalies:
            lines.append(f"   {best.anomalies} anomalies (garbage, damaged or cut frames): see "
                         "the lines above")
        return lines


class SniffSession(ScannerDriver):
    """The driver's link handling (reconnects, silence timeout, serial reopen) feeding a
    `Sniffer` instead of the engine; prints to `out`. Stops by itself after `max_events` SCAN
    events when given."""

    def __init__(self, sniffer: Sniffer, *, out: TextIO | None = None,
                 max_events: int | None = None, **link):
        fmt = sniffer.trials[0].fmt
        super().__init__(fmt, sniffer.scanner_id, None, **link)
        self.sniffer = sniffer
        self.out = out or sys.stdout
        self.max_events = max_events
        self.done = False
        self._announced = threading.Event()

    def announce(self, line: str) -> None:
        """The first line of the output (what is sniffed, with which preset); the link's own
        lines wait for it, so that it stays first."""
        self.out.write(line + "\n")
        self.out.flush()
        self._announced.set()

    def _print(self, lines: list[str]) -> None:
        if not self._announced.wait(5):
            self._announced.set()           # nobody announces: don't wait again
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        if self.max_events is not None and self.sniffer.events >= self.max_events:
            self.done = True
            self._stop.set()

    def _link_opened(self, peer: str) -> None:
        self._print([f"== connected: {peer}"])

    def _link_closed(self, reason: str) -> None:
        self._print([f"== disconnected: {reason}"])

    def _stream_start(self) -> None:
        pass                                # the trials keep their splitters; close() resets them

    def _receive(self, data: bytes, ts_ns: int) -> None:
        if not self.done:
            self._print(self.sniffer.feed(data))

    def _stream_end(self) -> None:
        if not self.done:
            self._print(self.sniffer.close())
