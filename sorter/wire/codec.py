"""The wire protocol, version 1: compact little-endian binary messages between the scanner
drivers, the engine and the PLC side. docs/protocol.md is the specification (byte offsets,
validation order, versioning, annotated examples); this module is its Python implementation.

Every message is a 16-byte header followed by `body_len` bytes of records. One message travels
as one ZeroMQ frame. A message is all-or-nothing: any defect, in the header or in one record,
makes the decoder raise `WireError` (with a stable `code` and the byte `offset`) and nothing of
the message is used; the receiver counts it, audits the raw bytes with reason `malformed` and
carries on. Decoders never read outside the buffer, whatever it holds.

Batches are columnar. The parsing and the encoding run in `sorter.wire._wire` (Cython, no GIL, one
pass, no Python object per record): decoding a SCAN message yields an `EventBatch` ready for
`Router.route`, plus the scanners' sequence numbers. A receiver draining its socket hands all
the frames it got to `decode_scans`: one compiled call, one combined `EventBatch`, and the
rejected frames with their errors (one malformed frame never costs the others).

    msg = encode_scan(events, seq, batch_seq=7)          # EventBatch + uint64 seq -> bytes
    header, payload = decode_message(msg)                 # dispatch on the kind
    scans = decode_scan(msg)                              # ScanBatch(header, events, seq)
    many = decode_scans([msg, hb, junk])                  # many frames, one combined batch
    out = encode_decisions("plan-42", scans.events.parcel_ids, scans.seq, dseq,
                           decisions.chute, decisions.reason, scans.events.scanner_ids)

`python -m sorter.wire HEX` prints the annotated dump of a message, or why it is malformed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from sorter.wire import _wire
from sorter.wire._wire import WireError
from sorter.core.codes import CHUTE_STATES, REASONS
from sorter.core.events import EventBatch

__all__ = [
    "MAGIC", "VERSION", "VERSION_DECIDED", "HEADER_SIZE", "SCAN", "DECISION", "CHUTE_STATUS", "SORT_CONFIRM",
    "HEARTBEAT", "KIND_NAMES", "OUTCOMES", "ERROR_CODES", "MAX_FRAME", "MAX_RECORDS",
    "MAX_READS", "MAX_READ_LEN", "Limits", "DEFAULT_LIMITS", "WireError", "Header", "ScanBatch",
    "DecisionBatch", "ChuteStatusBatch", "SortConfirmBatch", "ScanBatches", "peek_header",
    "decode_message", "encode_scan", "decode_scan", "decode_scans", "decode_scans_in",
    "encode_decisions", "encode_decisions_for", "decode_decisions", "decode_decisions_in",
    "DecisionColumns", "encode_chute_status", "decode_chute_status",
    "encode_sort_confirm", "decode_sort_confirm", "encode_heartbeat", "decode_heartbeat",
    "annotate",
]

MAGIC = b"PS"
VERSION = 1
VERSION_DECIDED = 2      # a DECISION message that carries its decision time (protocol.md 6.1)
HEADER_SIZE = 16

# Message kinds (header byte 3).
SCAN, DECISION, CHUTE_STATUS, SORT_CONFIRM, HEARTBEAT = 1, 2, 3, 4, 5
KIND_NAMES = {SCAN: "SCAN", DECISION: "DECISION", CHUTE_STATUS: "CHUTE_STATUS",
              SORT_CONFIRM: "SORT_CONFIRM", HEARTBEAT: "HEARTBEAT"}

# Record sizes in bytes (a SCAN record is 28 fixed bytes plus its reads).
SCAN_FIXED_SIZE = 28
DECISION_RECORD_SIZE = 32
CHUTE_STATUS_RECORD_SIZE = 4
SORT_CONFIRM_RECORD_SIZE = 16

# SORT_CONFIRM outcomes (index = code on the wire).
OUTCOMES = ("sorted", "failed_divert", "lost")
OUTCOME_SORTED, OUTCOME_FAILED_DIVERT, OUTCOME_LOST = range(3)

# Why a message is malformed: the stable names carried by WireError.code (in check order).
ERROR_CODES = tuple(_wire.ERROR_NAMES[1:])

# Default limits (docs/protocol.md, "Limits").
MAX_FRAME = 16 * 1024 * 1024     # bytes, header included
MAX_RECORDS = 65536              # records per message
MAX_READS = 255                  # reads per SCAN event (the wire field is a u8)
MAX_READ_LEN = 1024              # bytes per read


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts; anything beyond is malformed. Encoders enforce the same limits
    so that a sender never produces a message the default receiver rejects."""
    max_frame: int = MAX_FRAME
    max_records: int = MAX_RECORDS
    max_reads: int = MAX_READS
    max_read_len: int = MAX_READ_LEN

    def __post_init__(self):
        if not HEADER_SIZE <= self.max_frame <= 2**31 - 1:
            raise ValueError(f"max_frame must be within 16 .. 2**31 - 1, got {self.max_frame}")
        if not 0 <= self.max_records <= 2**32 - 1:
            raise ValueError(f"max_records must be within 0 .. 2**32 - 1, got {self.max_records}")
        if not 0 <= self.max_reads <= 255:
            raise ValueError(f"max_reads must be within 0 .. 255, got {self.max_reads}")
        if not 0 <= self.max_read_len <= 65535:
            raise ValueError(f"max_read_len must be within 0 .. 65535, got {self.max_read_len}")


DEFAULT_LIMITS = Limits()


class Header(NamedTuple):
    """The 16-byte header of every message (magic not repeated)."""
    version: int
    kind: int
    count: int         # records in the body
    body_len: int      # bytes after the header
    batch_seq: int     # the sender's message counter

    @property
    def frame_len(self) -> int:
        """Length of the whole message: header plus body."""
        return HEADER_SIZE + self.body_len

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind {self.kind}")


_header = Header._make


@dataclass
class ScanBatch:
    """A decoded SCAN message: the events in the core's layout and each event's scanner
    sequence number (uint64, parallel to the events)."""
    header: Header
    events: EventBatch
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)


@dataclass
class ScanBatches:
    """Many frames from a socket that receives SCAN and HEARTBEAT, decoded at once
    (`decode_scans`): the events of every valid SCAN frame, in frame order, as one batch."""
    events: EventBatch
    seq: np.ndarray            # uint64, parallel to the events: each event's scanner seq
    counts: np.ndarray         # int32, one per frame: its events (0: rejected or HEARTBEAT)
    kinds: np.ndarray          # uint8, one per frame: header kind (0: the header itself is bad)
    errors: list[tuple[int, WireError]]   # (frame index, error) of each rejected frame

    def __len__(self) -> int:
        return len(self.seq)

    def frame_of_event(self) -> np.ndarray:
        """int32, parallel to the events: the index of the frame each event came from (e.g.
        `recv_ns[batches.frame_of_event()]` for per-frame receive times)."""
        return _wire.frame_of_event(self.counts)     # np.repeat(arange(frames), counts)


@dataclass
class DecisionBatch:
    """A decoded DECISION message: columns in record order, all made by one plan."""
    header: Header
    plan_version: str
    parcel_id: np.ndarray      # uint64
    seq: np.ndarray            # uint64: the scan event's sequence number
    decision_seq: np.ndarray   # uint64: the engine's decision counter
    chute: np.ndarray          # uint16, 0 = no divert
    reason: np.ndarray         # uint8, index into codes.REASONS
    scanner_id: np.ndarray     # uint16
    decided_ns: int | None = None   # when the engine made them (version 2); None: version 1

    def __len__(self) -> int:
        return len(self.parcel_id)

    def reason_names(self) -> list[str]:
        return [REASONS[r] for r in self.reason.tolist()]


@dataclass
class ChuteStatusBatch:
    """A decoded CHUTE_STATUS message. Apply in record order: a later record for the same
    chute wins."""
    header: Header
    chute: np.ndarray          # uint16, never 0
    state: np.ndarray          # uint8, index into codes.CHUTE_STATES

    def __len__(self) -> int:
        return len(self.chute)

    def items(self) -> list[tuple[int, str]]:
        return [(c, CHUTE_STATES[s]) for c, s in zip(self.chute.tolist(), self.state.tolist())]


@dataclass
class SortConfirmBatch:
    """A decoded SORT_CONFIRM message: what physically happened to each parcel."""
    header: Header
    parcel_id: np.ndarray      # uint64
    chute: np.ndarray          # uint16: the chute the parcel entered, 0 = none
    outcome: np.ndarray        # uint8, index into OUTCOMES

    def __len__(self) -> int:
        return len(self.parcel_id)

    def outcome_names(self) -> list[str]:
        return [OUTCOMES[o] for o in self.outcome.tolist()]


# ---------------------------------------------------------------------------------------------
# Header and dispatch

def peek_header(buf) -> Header:
    """The header of a message, checking only the header itself (magic, version, kind, 16
    bytes present), not the body or the frame length. Raises WireError."""
    return Header(*_wire.header(buf, MAX_FRAME, MAX_RECORDS, False))


def decode_message(buf, *, limits: Limits = DEFAULT_LIMITS):
    """(header, payload) of any message: payload is a ScanBatch, DecisionBatch,
    ChuteStatusBatch, SortConfirmBatch, or None for a HEARTBEAT. Raises WireError.

    `buf` is anything exposing a contiguous byte buffer: bytes, bytearray, memoryview, a
    ZeroMQ frame, a uint8 numpy array."""
    kind = _wire.header(buf, limits.max_frame, limits.max_records, False)[1]
    if kind == SCAN:
        p = decode_scan(buf, limits=limits)
    elif kind == DECISION:
        p = decode_decisions(buf, limits=limits)
    elif kind == CHUTE_STATUS:
        p = decode_chute_status(buf, limits=limits)
    elif kind == SORT_CONFIRM:
        p = decode_sort_confirm(buf, limits=limits)
    else:
        return decode_heartbeat(buf, limits=limits), None
    return p.header, p


# ---------------------------------------------------------------------------------------------
# Encoder inputs: columns are any 1-d integer array-likes. Arrays of the wire's dtype (the
# dtypes of EventBatch, Decisions and the decoded batches) pass to the compiled encoder without
# a copy; anything else is converted there, and an integer out of the field's range is a
# WireError, never wrapped.

def _codes(values, names: tuple):
    """Map names (str) to their index in `names`; integer columns pass through."""
    if isinstance(values, np.ndarray) and values.dtype.kind not in "UO":
        return values
    vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
    try:
        return [names.index(v) if isinstance(v, str) else v for v in vals]
    except ValueError as e:
        raise WireError("bad_record", None, str(e)) from None


def _seq32(batch_seq: int) -> int:
    return int(batch_seq) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# SCAN

def encode_scan(events: EventBatch, seq, batch_seq: int = 0, *,
                limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One SCAN message carrying every event of the batch; `seq` is each event's scanner
    sequence number. batch_seq is taken modulo 2**32. Raises WireError when the batch cannot
    be encoded (too many reads on an event, a read too long, the message over the limits,
    inconsistent offsets)."""
    return _wire.encode_scan(
        events.parcel_ids, seq, events.ts_ns, events.scanner_ids, events.recirculations,
        events.event_offsets, events.read_offsets, events.data, _seq32(batch_seq),
        limits.max_frame, limits.max_records, limits.max_reads, limits.max_read_len)


def decode_scan(buf, *, limits: Limits = DEFAULT_LIMITS) -> ScanBatch:
    """The events of a SCAN message, parsed in one compiled pass. Raises WireError (kind
    other than SCAN: `unexpected_kind`)."""
    h, pid, seq, ts, sc, rc, eo, ro, data = _wire.decode_scan(
        buf, limits.max_frame, limits.max_records, limits.max_reads, limits.max_read_len)
    return ScanBatch(_header(h), EventBatch(parcel_ids=pid, scanner_ids=sc, ts_ns=ts,
                                            recirculations=rc, event_offsets=eo,
                                            read_offsets=ro, data=data), seq)


def decode_scans(frames, *, limits: Limits = DEFAULT_LIMITS) -> ScanBatches:
    """Decode a list of frames received where SCAN and HEARTBEAT are expected (the scans
    socket) in one compiled call: the events of all valid SCAN frames as ONE `EventBatch`.

    Each frame is all-or-nothing and stands alone: it is checked exactly as `decode_scan` (a
    SCAN) or `decode_heartbeat` (a HEARTBEAT) would check it, in the order of docs/protocol.md
    section 11 (header and frame length, then the kind: any kind but SCAN and HEARTBEAT is
    `unexpected_kind` at 3, then the body). A rejected frame adds no events and one entry
    `(frame index, WireError)` to `errors`, with the code, offset and detail the single-frame
    decoder raises; a HEARTBEAT adds nothing. Never raises WireError.

    `frames` is a sequence of bytes (as `sock.recv()` gives), or anything exposing a
    contiguous buffer (bytearray, memoryview, zmq.Frame). Raises TypeError (or BufferError)
    for an item that is not one, and OverflowError when the valid frames together hold more
    than 2**31 - 1 reads or bytes of reads (the batch's int32 offsets; keep the bytes per call
    well below 2 GiB); nothing is decoded then."""
    pid, seq, ts, sc, rc, eo, ro, data, counts, kinds, errors = _wire.decode_scans(
        frames, limits.max_frame, limits.max_records, limits.max_reads, limits.max_read_len)
    return ScanBatches(EventBatch(pid, sc, ts, rc, eo, ro, data), seq, counts, kinds, errors)


def decode_scans_in(buf, offsets, lengths, *, limits: Limits = DEFAULT_LIMITS) -> ScanBatches:
    """`decode_scans` of frames lying in one buffer (frame i at buf[offsets[i]:offsets[i] +
    lengths[i]], int64 columns): no object per frame, for readers of a journal segment.
    Raises ValueError for a frame outside the buffer."""
    pid, seq, ts, sc, rc, eo, ro, data, counts, kinds, errors = _wire.decode_scans_in(
        buf, offsets, lengths, limits.max_frame, limits.max_records, limits.max_reads,
        limits.max_read_len)
    return ScanBatches(EventBatch(pid, sc, ts, rc, eo, ro, data), seq, counts, kinds, errors)


# ---------------------------------------------------------------------------------------------
# DECISION

def encode_decisions(plan_version: str, parcel_id, seq, decision_seq, chute, reason, scanner_id,
                     batch_seq: int = 0, *, limits: Limits = DEFAULT_LIMITS,
                     decided_ns: int | None = None) -> bytes:
    """One DECISION message: one record per entry of the columns, all made by the plan
    `plan_version` (UTF-8, at most 255 bytes). `reason` holds codes.REASONS indices (or
    names). With `decided_ns` (ns since the Unix epoch, when the decisions were made) the
    message is version 2 and carries it (docs/protocol.md 6.1). Raises WireError."""
    return _wire.encode_decisions(
        plan_version.encode("utf-8"), parcel_id, seq, decision_seq, chute,
        _codes(reason, REASONS), scanner_id, _seq32(batch_seq), limits.max_frame,
        limits.max_records, decided_ns)


def encode_decisions_for(plan_version: str, scans: ScanBatch, decisions, first_decision_seq: int,
                         batch_seq: int = 0, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The DECISION message answering a decoded SCAN batch: `decisions` is the
    `sorter.core.events.Decisions` routed from `scans.events`; decision_seq counts up from
    first_decision_seq in event order."""
    n = len(scans)
    dseq = np.arange(first_decision_seq, first_decision_seq + n, dtype=np.uint64)
    return encode_decisions(plan_version, scans.events.parcel_ids, scans.seq, dseq,
                            decisions.chute, decisions.reason, scans.events.scanner_ids,
                            batch_seq, limits=limits)


def decode_decisions(buf, *, limits: Limits = DEFAULT_LIMITS) -> DecisionBatch:
    """The records of a DECISION message. Raises WireError."""
    h, plv, pid, seq, dseq, chute, reason, sc, decided = _wire.decode_decisions(
        buf, limits.max_frame, limits.max_records)
    try:
        plan_version = plv.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError("bad_record", HEADER_SIZE + 1 + e.start,
                        "plan_version is not UTF-8") from None
    return DecisionBatch(_header(h), plan_version, pid, seq, dseq, chute, reason, sc, decided)


@dataclass
class DecisionColumns:
    """Many DECISION messages decoded into one set of columns (`decode_decisions_in`):
    records in message order; `counts` records per message, `version_of` each message's
    plan version as an index into `versions`."""
    parcel_id: np.ndarray      # uint64
    seq: np.ndarray            # uint64
    decision_seq: np.ndarray   # uint64
    chute: np.ndarray          # uint16
    reason: np.ndarray         # uint8
    scanner_id: np.ndarray     # uint16
    counts: np.ndarray         # int64, one per message
    version_of: np.ndarray     # int32, one per message
    versions: list[str]

    def __len__(self) -> int:
        return len(self.parcel_id)


def decode_decisions_in(buf, offsets, lengths, *,
                        limits: Limits = DEFAULT_LIMITS) -> DecisionColumns:
    """The records of many DECISION messages lying in one buffer (message i at
    buf[offsets[i]:offsets[i] + lengths[i]], int64 columns), each checked as
    `decode_decisions` checks one, in one compiled call: what the audit's compactor reads
    from a journal segment. Raises WireError (its detail names the message) or ValueError (a
    message outside the buffer)."""
    pid, seq, dseq, chute, reason, sc, counts, version_of, versions = _wire.decode_decisions_in(
        buf, offsets, lengths, limits.max_frame, limits.max_records)
    names = []
    for v in versions:
        try:
            names.append(v.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise WireError("bad_record", HEADER_SIZE + 1 + e.start,
                            "plan_version is not UTF-8") from None
    return DecisionColumns(pid, seq, dseq, chute, reason, sc, counts, version_of, names)


# ---------------------------------------------------------------------------------------------
# CHUTE_STATUS, SORT_CONFIRM, HEARTBEAT

def encode_chute_status(chutes, states, batch_seq: int = 0, *,
                        limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One CHUTE_STATUS message: chute numbers (1..65535) and their states (codes.CHUTE_STATES
    indices or names). Raises WireError."""
    return _wire.encode_chute_status(chutes, _codes(states, CHUTE_STATES), _seq32(batch_seq),
                                     limits.max_frame, limits.max_records)


def decode_chute_status(buf, *, limits: Limits = DEFAULT_LIMITS) -> ChuteStatusBatch:
    """The records of a CHUTE_STATUS message. Raises WireError."""
    h, chute, state = _wire.decode_chute_status(buf, limits.max_frame, limits.max_records)
    return ChuteStatusBatch(_header(h), chute, state)


def encode_sort_confirm(parcel_id, chute, outcome, batch_seq: int = 0, *,
                        limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One SORT_CONFIRM message: parcel ids, the chute each actually entered (0 = none) and the
    outcome (OUTCOMES indices or names). Raises WireError."""
    return _wire.encode_sort_confirm(parcel_id, chute, _codes(outcome, OUTCOMES),
                                     _seq32(batch_seq), limits.max_frame, limits.max_records)


def decode_sort_confirm(buf, *, limits: Limits = DEFAULT_LIMITS) -> SortConfirmBatch:
    """The records of a SORT_CONFIRM message. Raises WireError."""
    h, pid, chute, outcome = _wire.decode_sort_confirm(buf, limits.max_frame, limits.max_records)
    return SortConfirmBatch(_header(h), pid, chute, outcome)


def encode_heartbeat(batch_seq: int = 0) -> bytes:
    """A HEARTBEAT: the header alone, count 0, body_len 0."""
    return _wire.encode_heartbeat(_seq32(batch_seq))


def decode_heartbeat(buf, *, limits: Limits = DEFAULT_LIMITS) -> Header:
    """The header of a HEARTBEAT message. Raises WireError."""
    return Header(*_wire.heartbeat(buf, limits.max_frame, limits.max_records))


# ---------------------------------------------------------------------------------------------
# Annotated dumps (the examples of docs/protocol.md are made by this function)

def _text(b: bytes) -> str:
    out = []
    for c in b:
        if c in (0x22, 0x5C):
            out.append("\\" + chr(c))
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    return '"' + "".join(out) + '"'


def _when(ts_ns: int) -> str:
    secs, ns = divmod(ts_ns, 1_000_000_000)
    try:
        t = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "(outside the calendar)"
    return f"{t}.{ns:09d}Z" if ns else f"{t}Z"


def annotate(buf, *, limits: Limits = DEFAULT_LIMITS) -> str:
    """An annotated hex dump of a valid message: one line per field, `offset  bytes  meaning`
    (offsets in decimal from the start of the message, long fields wrapped at 16 bytes).
    Raises WireError for a malformed message."""
    b = bytes(buf)
    header, payload = decode_message(b, limits=limits)
    lines = [f"{'offset':>6}  {'bytes':<47}  field"]

    def field(off: int, size: int, text: str) -> None:
        chunk = b[off: off + size]
        for i in range(0, max(len(chunk), 1), 16):
            hexes = " ".join(f"{x:02x}" for x in chunk[i: i + 16])
            lines.append(f"{off + i:>6}  {hexes:<47}  {text if i == 0 else ''}".rstrip())

    def note(text: str) -> None:
        lines.append(f"{'':>6}  {'':<47}  {text}")

    def u(off: int, size: int) -> int:
        return int.from_bytes(b[off: off + size], "little")

    field(0, 2, f"magic {_text(b[0:2])}")
    field(2, 1, f"version {b[2]}")
    field(3, 1, f"kind {b[3]} = {KIND_NAMES[b[3]]}")
    field(4, 4, f"count {header.count} records")
    field(8, 4, f"body_len {header.body_len} bytes")
    field(12, 4, f"batch_seq {header.batch_seq}")
    pos = HEADER_SIZE
    if header.kind == SCAN:
        for i in range(header.count):
            note(f"-- event {i}")
            ts = int.from_bytes(b[pos + 16: pos + 24], "little", signed=True)
            field(pos, 8, f"parcel_id {u(pos, 8)}")
            field(pos + 8, 8, f"seq {u(pos + 8, 8)}")
            field(pos + 16, 8, f"ts_ns {ts} = {_when(ts)}")
            field(pos + 24, 2, f"scanner_id {u(pos + 24, 2)}")
            field(pos + 26, 1, f"recirculations {b[pos + 26]}")
            field(pos + 27, 1, f"n_reads {b[pos + 27]}")
            m, pos = b[pos + 27], pos + SCAN_FIXED_SIZE
            for r in range(m):
                length = u(pos, 2)
                field(pos, 2, f"read {r}: length {length}")
                if length:
                    field(pos + 2, length, f"read {r}: {_text(b[pos + 2: pos + 2 + length])}")
                pos += 2 + length
    elif header.kind == DECISION:
        plv = b[pos]
        field(pos, 1, f"plan_version length {plv}")
        if plv:
            field(pos + 1, plv, f"plan_version {_text(b[pos + 1: pos + 1 + plv])}")
        pos += 1 + plv
        if header.version == VERSION_DECIDED:
            t = payload.decided_ns
            field(pos, 8, f"decided_ns {t} = {_when(t)}")
            pos += 8
        for i in range(header.count):
            note(f"-- decision {i}")
            field(pos, 8, f"parcel_id {u(pos, 8)}")
            field(pos + 8, 8, f"seq {u(pos + 8, 8)}")
            field(pos + 16, 8, f"decision_seq {u(pos + 16, 8)}")
            field(pos + 24, 2, f"chute {u(pos + 24, 2)}")
            field(pos + 26, 1, f"reason {b[pos + 26]} = {REASONS[b[pos + 26]]}")
            field(pos + 27, 1, "flags 0")
            field(pos + 28, 2, f"scanner_id {u(pos + 28, 2)}")
            field(pos + 30, 2, "reserved 0")
            pos += DECISION_RECORD_SIZE
    elif header.kind == CHUTE_STATUS:
        for i in range(header.count):
            field(pos, 2, f"chute {u(pos, 2)}")
            field(pos + 2, 1, f"state {b[pos + 2]} = {CHUTE_STATES[b[pos + 2]]}")
            field(pos + 3, 1, "reserved 0")
            pos += CHUTE_STATUS_RECORD_SIZE
    elif header.kind == SORT_CONFIRM:
        for i in range(header.count):
            note(f"-- confirmation {i}")
            field(pos, 8, f"parcel_id {u(pos, 8)}")
            field(pos + 8, 2, f"chute {u(pos + 8, 2)}")
            field(pos + 10, 1, f"outcome {b[pos + 10]} = {OUTCOMES[b[pos + 10]]}")
            field(pos + 11, 1, "reserved 0")
            field(pos + 12, 4, "reserved 0")
            pos += SORT_CONFIRM_RECORD_SIZE
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """python -m sorter.wire HEX...  (or - to read raw bytes from stdin): annotate a message."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m sorter.wire HEX... | -   (annotated dump of one wire message)")
        return 2
    if args == ["-"]:
        buf = sys.stdin.buffer.read()
    else:
        try:
            buf = bytes.fromhex("".join(args))
        except ValueError as e:
            print(f"not hex: {e}", file=sys.stderr)
            return 2
    try:
        sys.stdout.write(annotate(buf))
    except WireError as e:
        print(f"malformed: {e.code}, offset {e.offset}" + (f" ({e.detail})" if e.detail else ""))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
