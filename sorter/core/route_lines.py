"""`sorter route`: scan lines in, one JSON decision per line out.

For integrators who want to see where a parcel would go and for scripted checks. Lines are
routed in batches through the compiled core, exactly as the engine routes them.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, BinaryIO, Iterator, TextIO

from sorter.core.barcodes import decode
from sorter.core.codes import REASONS
from sorter.core.countries import alpha2_to_numeric
from sorter.core.events import EventBatch
from sorter.core.router import Router

if TYPE_CHECKING:                   # the core takes any object with a Plan's fields
    from sorter.plan import Plan

ESCAPES = ((b"<GS>", b"\x1d"), (b"\\x1d", b"\x1d"), (b"\\x1D", b"\x1d"))
MAX_LINE = 64 * 1024


class LineError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_line(raw: bytes) -> tuple[str, list[bytes]]:
    """(parcel id, reads) of one scan line; LineError naming the bad field."""
    if len(raw) > MAX_LINE:
        raise LineError("line", f"longer than {MAX_LINE} bytes")
    fields = raw.rstrip(b"\r\n").split(b"\t")
    try:
        parcel_id = fields[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise LineError("parcel_id", "is not UTF-8 text") from None
    if not parcel_id:
        raise LineError("parcel_id", "is empty (a line is: parcel id, then tab-separated reads)")
    reads = []
    for read in fields[1:]:
        for text, byte in ESCAPES:
            read = read.replace(text, byte)
        reads.append(read)
    return parcel_id, reads


def _chunks(lines: BinaryIO, size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip(b"\r\n") or raw.startswith(b"#"):
            continue                       # blank and comment lines carry no parcel
        chunk.append((number, raw))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def route_lines(plan: Plan, lines: BinaryIO, name: str, out: TextIO, err: TextIO,
                chute_states: dict[int, str] | None = None, batch_size: int = 4096) -> int:
    """Route every line (blank lines and lines starting with # are skipped); returns 0, or 1 when some line was bad (the others still routed)."""
    router = Router(plan)
    for chute, state in (chute_states or {}).items():
        router.set_chute_state(chute, state)
    home = alpha2_to_numeric(plan.home_country)
    bad = 0
    for chunk in _chunks(lines, max(1, batch_size)):
        parsed = []
        for number, raw in chunk:
            try:
                parsed.append((number, *parse_line(raw)))
            except LineError as e:
                bad += 1
                print(f"{name}:{number}: {e.field}: {e}", file=err, flush=True)
        if not parsed:
            continue
        batch = EventBatch.from_reads([reads for _, _, reads in parsed])
        decisions = router.route(batch)
        for (number, parcel_id, reads), (chute, reason, dest) in zip(
                parsed, zip(decisions.chute.tolist(), decisions.reason.tolist(),
                            decisions.destination.tolist())):
            out.write(json.dumps({
                "parcel_id": parcel_id,
                "chute": chute,
                "reason": REASONS[reason],
                "destination": router.destination_name(dest),
                "plan_version": plan.version,
                "line": number,
                "reads": [decode(r, home).to_json() for r in reads],
            }, ensure_ascii=False) + "\n")
        out.flush()
    return 1 if bad else 0
