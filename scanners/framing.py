"""Scanner telegrams, sans I/O: presets, framing, parsing and formatting.

Nothing here touches a socket or a clock. Bytes go in, frames and anomalies come out
(`FrameSplitter`); a frame becomes a `Telegram` (`parse_frame`); and the inverse,
`format_telegram`, writes the bytes a scanner would send (the simulator and the tests use it).
docs/scanners.md describes the preset format field by field, with example telegrams.

    fmt = load_format("sick_clv")                        # scanners/presets/sick_clv.toml
    splitter = FrameSplitter(fmt)
    for item in splitter.feed(b"\\x02145;RR473124829GB\\x03\\x02146;No"):
        ...                                              # Frame(b"145;RR473124829GB")
    parse_frame(fmt, b"145;RR473124829GB")               # Telegram(index="145", reads=[...])
    format_telegram(fmt, "146", [b"050010", None])       # b"\\x02146;050010;?\\x03" if "?" is
                                                         # the preset's partial no-read

The splitter's output depends only on the byte stream, never on how the stream was cut into
reads: that is what makes a driver's behaviour reproducible from a capture.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Sequence

__all__ = [
    "CONTROL_NAMES", "FIELD_NAMES", "CODE_FIELD_NAMES", "PARCEL_ANOMALIES", "PRESET_DIR",
    "MISMATCH_KINDS", "EDGE_BYTES",
    "PresetError", "Field", "TelegramFormat", "Frame", "Anomaly", "Telegram", "FrameSplitter",
    "decode_escapes", "encode_escapes", "load_format", "preset_names", "parse_frame",
    "format_telegram", "salvage_index",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# ASCII control characters by name: "<STX>" in a preset is the byte 0x02.
CONTROL_NAMES = {
    "NUL": 0x00, "SOH": 0x01, "STX": 0x02, "ETX": 0x03, "EOT": 0x04, "ENQ": 0x05, "ACK": 0x06,
    "BEL": 0x07, "BS": 0x08, "HT": 0x09, "TAB": 0x09, "LF": 0x0A, "VT": 0x0B, "FF": 0x0C,
    "CR": 0x0D, "SO": 0x0E, "SI": 0x0F, "DLE": 0x10, "DC1": 0x11, "DC2": 0x12, "DC3": 0x13,
    "DC4": 0x14, "NAK": 0x15, "SYN": 0x16, "ETB": 0x17, "CAN": 0x18, "EM": 0x19, "SUB": 0x1A,
    "ESC": 0x1B, "FS": 0x1C, "GS": 0x1D, "RS": 0x1E, "US": 0x1F, "SP": 0x20, "DEL": 0x7F,
}
_NAME_OF = {v: k for k, v in reversed(list(CONTROL_NAMES.items())) if k not in ("SP", "TAB")}
_TOKEN = re.compile(r"<([A-Z]{2,3}[0-9]?|x[0-9A-Fa-f]{2})>")

# Telegram-level fields, and the sub-fields of one code slot.
FIELD_NAMES = ("index", "count", "code", "codes", "type", "length", "gate_time", "status",
               "recirculations", "ignore")
CODE_FIELD_NAMES = ("code", "type", "length", "status", "ignore")
_SINGLE = ("index", "count", "codes", "type", "length", "gate_time", "status", "recirculations")
_NUMERIC = ("count", "length", "gate_time", "recirculations")

# Anomalies that stand for a parcel: the driver forwards each as a scan event with no read.
PARCEL_ANOMALIES = frozenset({"oversized", "unterminated", "truncated", "unparseable"})

# Signs that a preset does not match what the scanner sends (docs/scanners.md, "When the preset
# does not match"): each is counted and logged by the driver, and shown by `--sniff`.
MISMATCH_KINDS = (
    "untrimmed_code",        # a code with whitespace or control characters at its ends
    "non_numeric_index",     # the preset expects a numeric index (parcel id): missing or not digits
    "no_read_extra_bytes",   # a no-read string (or placeholder) with bytes around it
    "field_count",           # a telegram with another number of fields than the preset's
    "terminator_missing",    # the preset requires a terminator inside the frame; absent
)
# What strip_codes removes from both ends of a code: ASCII whitespace and control characters.
EDGE_BYTES = bytes(range(0x21)) + b"\x7f"


class PresetError(ValueError):
    """A preset file that cannot be used, with the file and key at fault."""


def decode_escapes(text: str) -> bytes:
    """Preset text to bytes: `<STX>`, `<CR>`, `<GS>`... (CONTROL_NAMES) and `<xHH>` become
    single bytes; everything else is taken literally (Latin-1). A `<` that starts no token
    stays a `<`."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("x"):
            return chr(int(name[1:], 16))
        return chr(CONTROL_NAMES[name]) if name in CONTROL_NAMES else m.group(0)
    try:
        return _TOKEN.sub(sub, text).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{text!r}: only Latin-1 characters and <NAME> tokens are allowed") from None


def encode_escapes(data: bytes) -> str:
    """Bytes as preset/doc text: control bytes as `<NAME>`, other non-printables as `<xHH>`,
    and a `<` that would start a token as `<x3C>`: decode_escapes(encode_escapes(b)) == b."""
    out = []
    for i, c in enumerate(data):
        if c == 0x3C:
            m = _TOKEN.match(data[i:i + 6].decode("latin-1"))
            token = m and (m.group(1).startswith("x") or m.group(1) in CONTROL_NAMES)
            out.append("<x3C>" if token else "<")
        elif c in _NAME_OF:
            out.append(f"<{_NAME_OF[c]}>")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"<x{c:02X}>")
    return "".join(out)


class Field(NamedTuple):
    name: str
    width: int | None = None     # fixed layout: bytes; None = delimited, or the rest (last)


@dataclass(frozen=True)
class TelegramFormat:
    """One scanner's telegram format, as loaded from a preset TOML file (docs/scanners.md)."""
    name: str
    stop: bytes
    fields: tuple[Field, ...]
    start: bytes = b""
    description: str = ""
    vendor: str = ""
    max_frame: int = 4096                 # bytes from the start of `start` to the end of `stop`
    ignore_between: bytes = b""           # bytes skipped silently between frames
    empty_frame: str = "no_read"          # "no_read" (a parcel) or "skip" (counted, not a parcel)
    restart_on_start: bool = True         # a start inside a frame ends the frame (unterminated)
    header: bytes = b""                   # literal after the start characters
    layout: str = "delimited"             # or "fixed"
    field_separator: bytes = b";"
    code_separator: bytes = b";"
    code_fields: tuple[str, ...] = ("code",)
    code_field_separator: bytes = b":"
    no_read: tuple[bytes, ...] = ()       # global: the scanner read nothing
    partial_no_read: tuple[bytes, ...] = ()   # local: one code slot failed
    no_read_status: tuple[bytes, ...] = ()    # status values meaning "no read"
    pad: bytes = b" "                     # fixed layout: fill byte stripped from text fields
    index_width: int = 0                  # zero-pad the index to this width when formatting
    index_is_parcel_id: bool = True       # a numeric index is the sorter's tracking id
    heartbeat: bytes = b""                # a frame body that is a keep-alive, not a parcel
    terminator: bytes = b""               # the telegram's own end, inside the frame (SICK: CR LF
                                          # before ETX): removed when present
    terminator_required: bool = False     # its absence is a `terminator_missing` mismatch
    strip_codes: bool = True              # strip EDGE_BYTES from both ends of codes and the index
    source: str = ""

    # -- derived --------------------------------------------------------------------------
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def has_index(self) -> bool:
        return "index" in self.names

    @property
    def has_recirculations(self) -> bool:
        return "recirculations" in self.names

    def describe(self) -> str:
        """A one-line picture of the telegram, e.g. `<STX>index;code;code...<ETX>`."""
        parts = []
        for f in self.fields:
            if f.name == "codes":
                sep = encode_escapes(self.code_separator)
                parts.append(f"code{sep}code...")
            else:
                parts.append(f.name + (f"[{f.width}]" if f.width else ""))
        sep = "" if self.layout == "fixed" else encode_escapes(self.field_separator)
        term = encode_escapes(self.terminator)
        if term and not self.terminator_required:
            term = f"[{term}]"
        after = ""
        if self.ignore_between and self.start:
            after = f"[{encode_escapes(self.ignore_between)}]"
        return (encode_escapes(self.start) + encode_escapes(self.header) + sep.join(parts)
                + term + encode_escapes(self.stop) + after)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict, source: str = "<preset>") -> "TelegramFormat":
        return _Loader(doc, source).load()


def preset_names() -> list[str]:
    """The bundled presets (files in scanners/presets/)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_format(name_or_path: str | Path) -> TelegramFormat:
    """A bundled preset by name (`sick_clv`), or a preset file by path. Raises PresetError."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.exists() or "/" in text or "\\" in text):
        path = PRESET_DIR / f"{text}.toml"
        if not path.exists():
            raise PresetError(f"no preset named {text!r}; bundled: {', '.join(preset_names())}"
                              " (or give a path to a .toml file)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PresetError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from None
    return TelegramFormat.from_dict(doc, str(path))


class _Loader:
    SECTIONS = {
        "preset": ("name", "description", "vendor"),
        "framing": ("start", "stop", "max_frame", "ignore_between", "empty_frame",
                    "restart_on_start"),
        "telegram": ("header", "layout", "field_separator", "code_separator", "fields",
                     "code_fields", "code_field_separator", "no_read", "partial_no_read",
                     "no_read_status", "pad", "index_width", "index_is_parcel_id", "heartbeat",
                     "terminator", "terminator_required", "strip_codes"),
    }

    def __init__(self, doc: dict, source: str):
        self.doc, self.source = doc, source

    def fail(self, where: str, message: str):
        raise PresetError(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def get(self, section: str, key: str, kind: type, default: Any) -> Any:
        value = self.doc.get(section, {}).get(key, default)
        if kind is bytes:
            if not isinstance(value, str):
                self.fail(f"[{section}] {key}", f"expected a string, got {type(value).__name__}")
            try:
                return decode_escapes(value)
            except ValueError as e:
                self.fail(f"[{section}] {key}", str(e))
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(f"[{section}] {key}", f"expected an integer, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            self.fail(f"[{section}] {key}", f"expected true or false, got {value!r}")
        if kind is str and not isinstance(value, str):
            self.fail(f"[{section}] {key}", f"expected a string, got {value!r}")
        return value

    def strings(self, section: str, key: str) -> tuple[bytes, ...]:
        value = self.doc.get(section, {}).get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"[{section}] {key}", "expected a list of non-empty strings")
        return tuple(decode_escapes(v) for v in value)

    def load(self) -> TelegramFormat:
        doc = self.doc
        if not isinstance(doc, dict):
            self.fail("", "expected a table")
        for section, value in doc.items():
            if section not in self.SECTIONS:
                self.fail(f"[{section}]", f"unknown section; expected one of {', '.join(self.SECTIONS)}")
            if not isinstance(value, dict):
                self.fail(f"[{section}]", "expected a table")
            for key in value:
                if key not in self.SECTIONS[section]:
                    self.fail(f"[{section}] {key}", "unknown key; expected one of "
                              + ", ".join(self.SECTIONS[section]))
        name = self.get("preset", "name", str, Path(self.source).stem)
        layout = self.get("telegram", "layout", str, "delimited")
        if layout not in ("delimited", "fixed"):
            self.fail("[telegram] layout", f"expected 'delimited' or 'fixed', got {layout!r}")
        fields = self.fields(layout)
        code_fields = self.doc.get("telegram", {}).get("code_fields", ["code"])
        if (not isinstance(code_fields, list) or code_fields.count("code") != 1
                or any(f not in CODE_FIELD_NAMES for f in code_fields)):
            self.fail("[telegram] code_fields", "expected a list of "
                      + ", ".join(CODE_FIELD_NAMES) + " with `code` exactly once")
        start = self.get("framing", "start", bytes, "")
        stop = self.get("framing", "stop", bytes, "")
        if not stop:
            self.fail("[framing] stop", "a stop sequence is required (e.g. \"<ETX>\" or \"<CR><LF>\")")
        if start == stop:
            self.fail("[framing] start", "start and stop must differ")
        max_frame = self.get("framing", "max_frame", int, 4096)
        if not len(start) + len(stop) < max_frame <= 16 * 1024 * 1024:
            self.fail("[framing] max_frame", "must exceed the start and stop lengths, at most 16 MiB")
        empty = self.get("framing", "empty_frame", str, "no_read" if start else "skip")
        if empty not in ("no_read", "skip"):
            self.fail("[framing] empty_frame", f"expected 'no_read' or 'skip', got {empty!r}")
        fsep = self.get("telegram", "field_separator", bytes, ";")
        csep = self.get("telegram", "code_separator", bytes, fsep.decode("latin-1") if fsep else "")
        if layout == "delimited" and not fsep and len(fields) > 1:
            self.fail("[telegram] field_separator", "a delimited layout with several fields needs one")
        pad = self.get("telegram", "pad", bytes, " ")
        if len(pad) != 1:
            self.fail("[telegram] pad", "expected exactly one character")
        cfsep = self.get("telegram", "code_field_separator", bytes, ":")
        if len(code_fields) > 1 and (not cfsep or cfsep in (fsep, csep)):
            self.fail("[telegram] code_field_separator",
                      "needed with several code_fields, and must differ from the separators")
        terminator = self.get("telegram", "terminator", bytes, "")
        if terminator and stop in terminator:
            self.fail("[telegram] terminator", "contains the stop sequence (the terminator is "
                      "inside the frame, before the stop)")
        if terminator and (fsep and fsep in terminator or csep and csep in terminator):
            self.fail("[telegram] terminator", "contains a separator")
        required = self.get("telegram", "terminator_required", bool, False)
        if required and not terminator:
            self.fail("[telegram] terminator_required", "needs a terminator")
        for key, value in (("start", start), ("stop", stop)):
            for other, sep in (("field_separator", fsep), ("code_separator", csep)):
                if sep and sep in value:
                    self.fail(f"[framing] {key}", f"contains the {other}")
        return TelegramFormat(
            name=name, description=self.get("preset", "description", str, ""),
            vendor=self.get("preset", "vendor", str, ""),
            start=start, stop=stop, max_frame=max_frame,
            ignore_between=self.get("framing", "ignore_between", bytes, ""),
            empty_frame=empty,
            restart_on_start=self.get("framing", "restart_on_start", bool, True),
            header=self.get("telegram", "header", bytes, ""), layout=layout,
            field_separator=fsep, code_separator=csep, fields=fields,
            code_fields=tuple(code_fields),
            code_field_separator=cfsep,
            no_read=self.strings("telegram", "no_read"),
            partial_no_read=self.strings("telegram", "partial_no_read"),
            no_read_status=self.strings("telegram", "no_read_status"),
            pad=pad, index_width=self.get("telegram", "index_width", int, 0),
            index_is_parcel_id=self.get("telegram", "index_is_parcel_id", bool, True),
            heartbeat=self.get("telegram", "heartbeat", bytes, ""),
            terminator=terminator, terminator_required=required,
            strip_codes=self.get("telegram", "strip_codes", bool, True), source=self.source)

    def fields(self, layout: str) -> tuple[Field, ...]:
        raw = self.doc.get("telegram", {}).get("fields")
        if not isinstance(raw, list) or not raw:
            self.fail("[telegram] fields", "required: a list of field names or {name, width} tables")
        out = []
        for i, f in enumerate(raw):
            where = f"[telegram] fields[{i}]"
            if isinstance(f, str):
                name, width = f, None
            elif isinstance(f, dict) and set(f) <= {"name", "width"} and "name" in f:
                name, width = f["name"], f.get("width")
                if width is not None and (isinstance(width, bool) or not isinstance(width, int)
                                          or width <= 0):
                    self.fail(where, f"width must be a positive integer, got {width!r}")
            else:
                self.fail(where, "expected a field name or a table {name = ..., width = N}")
            if name not in FIELD_NAMES:
                self.fail(where, f"unknown field {name!r}; expected one of {', '.join(FIELD_NAMES)}")
            out.append(Field(name, width))
        names = [f.name for f in out]
        for n in _SINGLE:
            if names.count(n) > 1:
                self.fail("[telegram] fields", f"{n!r} appears more than once")
        if "codes" in names and "code" in names:
            self.fail("[telegram] fields", "use either one `codes` field or `code` slots, not both")
        if "codes" not in names and "code" not in names:
            self.fail("[telegram] fields", "no `code` or `codes` field")
        if layout == "fixed":
            for i, f in enumerate(out):
                if f.width is None and i != len(out) - 1:
                    self.fail(f"[telegram] fields[{i}]", "a fixed layout needs a width on every "
                              "field but the last")
        elif any(f.width for f in out):
            self.fail("[telegram] fields", "widths need layout = \"fixed\"")
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True)
class Frame:
    """The bytes between a start and a stop (neither included)."""
    body: bytes


@dataclass(frozen=True)
class Anomaly:
    """Something in the stream that is not a good frame. `data` is the offending bytes (for a
    frame anomaly: the frame body so far, without the start characters)."""
    kind: str            # garbage, empty, oversized, unterminated, truncated, unparseable
                         # (and skipped, only with FrameSplitter(report_skipped=True))
    data: bytes = b""
    detail: str = ""
    mismatch: str = ""   # an unparseable frame that shows a preset mismatch (MISMATCH_KINDS)

    @property
    def is_parcel(self) -> bool:
        """Whether a parcel stood behind it (the driver then sends a no-read event)."""
        return self.kind in PARCEL_ANOMALIES


_HUNT, _FRAME, _SKIP = range(3)


class FrameSplitter:
    """Bytes in, frames out; handles frames split across reads, several frames in one read,
    garbage between frames, over-long frames and stop-only formats.

    Rules (docs/scanners.md, "Framing"), all depending on the byte stream only:
    - With start characters: bytes before a start are garbage, reported as one
      Anomaly("garbage") per run (runs over `max_frame` are reported in max_frame pieces), unless
      they are all `ignore_between` bytes. A frame ends at the first stop; a start before the stop
      (restart_on_start) ends it as Anomaly("unterminated") and opens a new frame.
    - A frame longer than max_frame (start and stop included) is Anomaly("oversized") carrying
      its first bytes; the splitter then resynchronises at the next start (stop-only formats: after
      the next stop).
    - Without start characters every byte belongs to a frame; `ignore_between` bytes at the
      beginning of a frame are skipped; an empty frame is Anomaly("empty") or, with
      empty_frame = "no_read", an empty Frame.
    - close() ends the stream: an open frame is Anomaly("truncated"), pending garbage is reported.
    - report_skipped=True (sniff mode) also reports the `ignore_between` bytes it skips, as
      Anomaly("skipped"): not a parcel, not counted by the driver.
    """

    def __init__(self, fmt: TelegramFormat, garbage_cap: int | None = None,
                 report_skipped: bool = False):
        self.fmt = fmt
        self._report_skipped = report_skipped
        self._start, self._stop = fmt.start, fmt.stop
        self._ignore = frozenset(fmt.ignore_between)
        self._cap = garbage_cap or fmt.max_frame
        self._buf = bytearray()
        self._garbage = bytearray()
        self._state = _HUNT if self._start else _FRAME
        self._out: list[Frame | Anomaly] = []

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for more input."""
        return len(self._buf) + len(self._garbage)

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not ended (a disconnect now truncates it)."""
        return self._state == _FRAME and bool(self._buf)

    def feed(self, data: bytes) -> list[Frame | Anomaly]:
        self._buf += data
        self._run(final=False)
        out, self._out = self._out, []
        return out

    def close(self) -> list[Frame | Anomaly]:
        """End of stream: report what is pending and start afresh."""
        self._run(final=True)
        if self._state == _HUNT:
            self._garbage += self._buf
            self._flush_garbage()
        elif self._state == _FRAME and self._buf:
            self._out.append(Anomaly("truncated", bytes(self._buf[len(self._start):]),
                                     "stream ended inside a frame"))
        self._buf.clear()
        self._garbage.clear()
        self._state = _HUNT if self._start else _FRAME
        out, self._out = self._out, []
        return out

    # -- internals ----------------------------------------------------------------------------
    def _flush_garbage(self) -> None:
        if self._garbage:
            chunk = bytes(self._garbage)
            self._garbage.clear()
            if not all(c in self._ignore for c in chunk):
                self._out.append(Anomaly("garbage", chunk, f"{len(chunk)} bytes between frames"))
            elif self._report_skipped:
                self._out.append(Anomaly("skipped", chunk, "ignore_between bytes"))

    def _add_garbage(self, data) -> None:
        self._garbage += data
        while len(self._garbage) >= self._cap:
            rest = self._garbage[self._cap:]
            del self._garbage[self._cap:]
            self._flush_garbage()
            self._garbage += rest

    def _oversized(self) -> None:
        body = bytes(self._buf[len(self._start): self.fmt.max_frame])
        self._out.append(Anomaly("oversized", body, f"frame longer than {self.fmt.max_frame} "
                                 "bytes (start and stop included); its first bytes kept"))

    def _run(self, final: bool) -> None:
        if self._start:
            while self._step_framed(final):
                pass
        else:
            while self._step_stop_only(final):
                pass

    def _step_framed(self, final: bool) -> bool:
        buf, start, stop = self._buf, self._start, self._stop
        L, max_frame = len(start), self.fmt.max_frame
        if self._state in (_HUNT, _SKIP):
            i = buf.find(start)
            if i < 0:
                keep = min(len(buf), L - 1)
                if self._state == _HUNT:
                    self._add_garbage(buf[:len(buf) - keep])
                del buf[:len(buf) - keep]
                return False
            if self._state == _HUNT:
                self._add_garbage(buf[:i])
                self._flush_garbage()
            del buf[:i]
            self._state = _FRAME
            return True
        # _FRAME: buf starts with the start characters
        s = buf.find(stop, L)
        r = buf.find(start, L) if self.fmt.restart_on_start else -1
        n = len(buf)
        if s >= 0 and (r < 0 or s <= r) and (final or s + L - 1 <= n):
            end = s + len(stop)
            if end <= max_frame:
                self._out.append(Frame(bytes(buf[L:s])) if s > L or self.fmt.empty_frame == "no_read"
                                 else Anomaly("empty", b"", "empty frame"))
                del buf[:end]
                self._state = _HUNT
            else:
                self._oversized()
                del buf[:L]
                self._state = _SKIP
            return True
        if r >= 0 and (s < 0 or r < s) and (final or r + len(stop) - 1 <= n):
            if r <= max_frame:
                self._out.append(Anomaly("unterminated", bytes(buf[L:r]),
                                         "a new start came before the stop"))
            else:
                self._oversized()
            del buf[:r]
            return True
        if n >= max_frame + L and s < 0 and r < 0:
            self._oversized()
            del buf[:max(L, n - (L - 1))]
            self._state = _SKIP
            return True
        return False

    def _step_stop_only(self, final: bool) -> bool:
        buf, stop, max_frame = self._buf, self._stop, self.fmt.max_frame
        if self._state == _SKIP:
            s = buf.find(stop)
            if s < 0:
                del buf[:max(0, len(buf) - (len(stop) - 1))]
                return False
            del buf[:s + len(stop)]
            self._state = _FRAME
            return True
        skip = 0
        while skip < len(buf) and buf[skip] in self._ignore and not buf.startswith(stop, skip):
            skip += 1
        if skip:
            if self._report_skipped:
                self._out.append(Anomaly("skipped", bytes(buf[:skip]), "ignore_between bytes"))
            del buf[:skip]
        s = buf.find(stop)
        if s >= 0:
            end = s + len(stop)
            if end > max_frame:
                self._oversized()
            elif s == 0:
                self._out.append(Frame(b"") if self.fmt.empty_frame == "no_read"
                                 else Anomaly("empty", b"", "empty frame"))
            else:
                self._out.append(Frame(bytes(buf[:s])))
            del buf[:end]
            return True
        if len(buf) >= max_frame:
            self._oversized()
            del buf[:len(buf) - (len(stop) - 1)]
            self._state = _SKIP
            return True
        return False


# ---------------------------------------------------------------------------------------------
# Telegrams


@dataclass(frozen=True)
class Telegram:
    """One parsed frame. `reads` are the codes to route (no-read slots removed); an empty
    list is a no read."""
    index: str | None
    reads: list[bytes]
    gate_ms: int | None = None
    count: int | None = None
    status: str | None = None
    recirculations: int | None = None
    types: list[str] = field(default_factory=list)   # per read, when the format carries types
    no_read: bool = False        # the scanner reported a global no read
    partial: int = 0             # code slots that were local no reads (placeholders, status)
    warnings: tuple[str, ...] = ()
    heartbeat: bool = False      # a keep-alive frame: no parcel
    mismatches: tuple[tuple[str, str], ...] = ()   # (kind, detail): the preset does not fit


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def _int(value: bytes) -> int | None:
    v = value.strip()
    return int(v) if v.isdigit() else None


def _split_slot(fmt: TelegramFormat, slot: bytes) -> dict[str, bytes] | None:
    if len(fmt.code_fields) == 1:
        return {"code": slot}
    parts = slot.split(fmt.code_field_separator)
    if len(parts) != len(fmt.code_fields):
        return None
    return dict(zip(fmt.code_fields, parts))


def _no_read_match(fmt: TelegramFormat, value: bytes) -> tuple[str, bool] | None:
    """Whether `value` is a no-read string ("no_read") or a failed-slot placeholder
    ("partial"), and whether exactly (False: with extra bytes around it, a preset mismatch).
    Extra whitespace or control characters around either count; a global no-read string of three
    or more characters inside other bytes counts too (`NoRead01`)."""
    if value in fmt.no_read:
        return "no_read", True
    if value in fmt.partial_no_read:
        return "partial", True
    trimmed = value.strip(EDGE_BYTES)
    if trimmed != value:
        if trimmed in fmt.no_read:
            return "no_read", False
        if trimmed in fmt.partial_no_read:
            return "partial", False
    for s in fmt.no_read:
        if len(s) >= 3 and s in value:
            return "no_read", False
    return None


def _shown(value: bytes, limit: int = 48) -> str:
    text = encode_escapes(value[:limit])
    return text + ("..." if len(value) > limit else "")


def parse_frame(fmt: TelegramFormat, frame: Frame | bytes) -> Telegram | Anomaly:
    """The telegram in a frame body, or Anomaly("unparseable") saying why not. Signs that the
    preset does not fit the scanner's output are in `Telegram.mismatches` (or
    `Anomaly.mismatch`); the telegram is still parsed as well as the preset allows."""
    body = frame.body if isinstance(frame, Frame) else bytes(frame)
    raw = body
    mismatches: list[tuple[str, str]] = []

    def bad(detail: str, mismatch: str = "") -> Anomaly:
        return Anomaly("unparseable", raw, detail, mismatch)

    def mismatch(kind: str, detail: str) -> None:
        if all(k != kind for k, _ in mismatches):
            mismatches.append((kind, detail))

    if fmt.terminator:
        if body.endswith(fmt.terminator):
            body = body[:-len(fmt.terminator)]
        elif fmt.terminator_required:
            mismatch("terminator_missing", f"the frame does not end with the terminator "
                     f"{encode_escapes(fmt.terminator)} before the stop")
    if fmt.heartbeat and body == fmt.heartbeat:
        return Telegram(None, [], heartbeat=True)
    if fmt.header:
        if not body.startswith(fmt.header):
            return bad(f"header {encode_escapes(fmt.header)!r} missing")
        body = body[len(fmt.header):]
    if not body:
        return Telegram(None, [], mismatches=tuple(mismatches))
    if body in fmt.no_read or body.strip(EDGE_BYTES) in fmt.no_read:
        if body not in fmt.no_read:
            mismatch("no_read_extra_bytes", f"no-read string with extra bytes: {_shown(body)}")
        if fmt.has_index and fmt.index_is_parcel_id:
            mismatch("non_numeric_index", "no index: the telegram is only the no-read string")
        return Telegram(None, [], no_read=True, mismatches=tuple(mismatches))

    values: dict[str, bytes] = {}
    slots: list[bytes] = []
    early_no_read = False          # a no-read telegram that leaves out the trailing fields
    fields, names = fmt.fields, fmt.names
    if fmt.layout == "fixed":
        pos = 0
        for f in fields:
            if f.width is None:
                chunk, pos = body[pos:], len(body)
            else:
                if pos + f.width > len(body):
                    return bad(f"{len(body)} bytes, too short for field {f.name!r}")
                chunk, pos = body[pos: pos + f.width], pos + f.width
            if f.name == "codes":
                slots.extend(chunk.split(fmt.code_separator) if fmt.code_separator else [chunk])
            elif f.name == "code":
                slots.append(chunk.rstrip(fmt.pad))
            else:
                values[f.name] = chunk.strip(fmt.pad)
        if pos != len(body):
            return bad(f"{len(body) - pos} bytes after the last field")
    else:
        tokens = body.split(fmt.field_separator) if fmt.field_separator else [body]
        shared = "codes" in names and fmt.code_separator == fmt.field_separator
        k = names.index("codes") if "codes" in names else -1
        required = len(fields) - 1 if shared else len(fields)
        if not shared:
            while len(tokens) > required and tokens[-1] == b"":
                tokens.pop()                          # trailing separators
        last = _no_read_match(fmt, tokens[-1]) if len(tokens) < required else None
        if last is not None and last[0] == "no_read":
            early_no_read = True
            if not last[1]:
                mismatch("no_read_extra_bytes",
                         f"no-read string with extra bytes: {_shown(tokens[-1])}")
            for f, t in zip(fields, tokens[:-1]):
                if f.name not in ("code", "codes"):
                    values[f.name] = t
        elif shared:
            if len(tokens) < required:
                return bad(f"{len(tokens)} fields, expected at least {required + 1}", "field_count")
            left, right = fields[:k], fields[k + 1:]
            for f, t in zip(left, tokens):
                values[f.name] = t
            for f, t in zip(right, tokens[len(tokens) - len(right):]):
                values[f.name] = t
            slots = tokens[k: len(tokens) - len(right)]
            if not slots and len(fields) > 1 and (fmt.no_read or fmt.no_read_status):
                mismatch("field_count", f"{len(tokens)} field(s), expected at least "
                         f"{required + 1}: no code and no no-read string where the codes go")
        else:
            if len(tokens) != required:
                return bad(f"{len(tokens)} fields, expected {required}", "field_count")
            for f, t in zip(fields, tokens):
                if f.name == "codes":
                    slots = t.split(fmt.code_separator) if fmt.code_separator else [t]
                elif f.name == "code":
                    slots.append(t)
                else:
                    values[f.name] = t

    warnings: list[str] = []
    index = values.get("index")
    if index is not None:
        index = index.strip(fmt.pad)
        if fmt.strip_codes:
            index = index.strip(EDGE_BYTES)
    index_text = _text(index) if index is not None else None
    if fmt.has_index and fmt.index_is_parcel_id and not (
            index_text and index_text.isascii() and index_text.isdigit()):
        mismatch("non_numeric_index", "no index" if not index_text else
                 f"index {_shown(index)} is not a number")
    status = _text(values["status"]) if "status" in values else None
    numbers: dict[str, int | None] = {}
    for name in _NUMERIC:
        if name in values:
            numbers[name] = _int(values[name])
            if numbers[name] is None and values[name].strip():
                warnings.append(f"bad_{name}")
    status_no_read = "status" in values and values["status"] in fmt.no_read_status

    reads: list[bytes] = []
    types: list[str] = []
    failed = 0                  # slots that were no-read strings, placeholders or no-read status
    said_no_read = early_no_read
    if not status_no_read:
        for slot in slots:
            if not slot:
                continue                              # empty slot: nothing was there
            match = _no_read_match(fmt, slot)
            if match is not None:
                if not match[1]:
                    mismatch("no_read_extra_bytes", f"no-read string with extra bytes: "
                             f"{_shown(slot)}")
                said_no_read |= match[0] == "no_read"
                failed += 1
                continue
            parts = _split_slot(fmt, slot)
            if parts is None:
                return bad(f"code slot with {slot.count(fmt.code_field_separator) + 1} parts, "
                           f"expected {len(fmt.code_fields)}")
            code = parts["code"]
            trimmed = code.strip(EDGE_BYTES)
            if trimmed != code:
                mismatch("untrimmed_code", f"code {_shown(code)} has whitespace or control "
                         "characters at its ends" + (" (stripped)" if fmt.strip_codes else ""))
                if fmt.strip_codes:
                    code = trimmed
                    if not code:
                        continue                      # only a stray CR LF: no code
            match = _no_read_match(fmt, code) if code and code is not slot else None
            if match is not None and not match[1]:
                mismatch("no_read_extra_bytes", f"no-read string with extra bytes: {_shown(code)}")
            if (("status" in parts and parts["status"] in fmt.no_read_status) or not code
                    or match is not None):
                failed += 1
                continue
            if "length" in parts and _int(parts["length"]) != len(code):
                warnings.append("length_mismatch")
            reads.append(code)
            if "type" in parts:
                types.append(_text(parts["type"]))
    if "type" in values and not types and reads:
        types = [_text(values["type"])] * len(reads)
    no_read = status_no_read or (not reads and said_no_read)
    count = numbers.get("count")
    if count is not None and not no_read and count not in (len(reads), len(reads) + failed):
        warnings.append("count_mismatch")
    return Telegram(index_text or None, reads if not status_no_read else [],
                    gate_ms=numbers.get("gate_time"), count=count, status=status,
                    recirculations=numbers.get("recirculations"), types=types,
                    no_read=no_read, partial=0 if no_read else failed,
                    warnings=tuple(dict.fromkeys(warnings)), mismatches=tuple(mismatches))


def salvage_index(fmt: TelegramFormat, body: bytes) -> str | None:
    """The index of a damaged frame (over-long, unterminated, truncated), when the bytes that
    carry it arrived complete; otherwise None."""
    if not fmt.has_index:
        return None
    if fmt.header:
        if not body.startswith(fmt.header):
            return None
        body = body[len(fmt.header):]
    k = fmt.names.index("index")
    if fmt.layout == "fixed":
        pos = sum(f.width or 0 for f in fmt.fields[:k])
        width = fmt.fields[k].width
        if width is None or pos + width > len(body):
            return None
        value = body[pos: pos + width].strip(fmt.pad)
    else:
        if not fmt.field_separator:
            return None
        if "codes" in fmt.names and fmt.names.index("codes") < k:
            return None               # counted from the right: not known in a damaged frame
        tokens = body.split(fmt.field_separator, k + 1)
        if len(tokens) < k + 2:
            return None
        value = tokens[k]
    text = _text(value)
    return text or None


# ---------------------------------------------------------------------------------------------
# Formatting (the inverse of parse_frame)


def _guess_type(read: bytes) -> str:
    if read[:3] in (b"]C1", b"]d2", b"]Q3", b"]e0"):
        return "GS1"
    return "C128"


def format_telegram(fmt: TelegramFormat, index: str | int | None, reads: Sequence[bytes | None],
                    *, gate_ms: int | None = None, recirculations: int | None = None,
                    types: Sequence[str] | None = None, framed: bool = True) -> bytes:
    """The bytes a scanner of this format sends for one parcel. `reads` may hold None for a
    code slot that failed (a local no read: the preset's placeholder is written); no read at all
    (empty, or only None) writes the global no-read string. `framed=False` leaves out the start
    and stop characters. Raises ValueError when the telegram cannot be expressed (a value too
    wide for a fixed field, a code containing a separator, no placeholder for a failed slot, the
    whole longer than max_frame)."""
    reads = list(reads)
    good = [r for r in reads if r is not None]
    no_read = not good
    if index is not None and not isinstance(index, str):
        index = str(int(index))
    if index is not None and fmt.index_width and index.isdigit():
        index = index.zfill(fmt.index_width)
    for r in good:
        for name, sep in (("field separator", fmt.field_separator),
                          ("code separator", fmt.code_separator), ("stop", fmt.stop),
                          ("start", fmt.start)):
            if sep and sep in r:
                raise ValueError(f"code {r!r} contains the {name}")
        if not r or _no_read_match(fmt, r) is not None:
            raise ValueError(f"code {r!r} cannot be told from a no read")
        if fmt.terminator and fmt.terminator in r:
            raise ValueError(f"code {r!r} contains the terminator")
        if fmt.strip_codes and r.strip(EDGE_BYTES) != r:
            raise ValueError(f"code {r!r} has whitespace or control characters at its ends "
                             "(the preset strips them)")

    def slot(read: bytes | None, i: int) -> bytes:
        if read is None:
            if fmt.partial_no_read or fmt.no_read:
                return (fmt.partial_no_read or fmt.no_read)[0]
            if "status" in fmt.code_fields and fmt.no_read_status:
                parts = {"status": fmt.no_read_status[0], "code": b"", "type": b"",
                         "length": b"0", "ignore": b""}
                return fmt.code_field_separator.join(parts[f] for f in fmt.code_fields)
            raise ValueError(f"preset {fmt.name} has no placeholder for a failed code slot")
        if len(fmt.code_fields) == 1:
            return read
        kind = (types[i] if types and i < len(types) else _guess_type(read)).encode("latin-1")
        parts = {"code": read, "type": kind, "length": str(len(read)).encode(), "status": b"0",
                 "ignore": b""}
        out = fmt.code_field_separator.join(parts[f] for f in fmt.code_fields)
        return out

    if no_read:
        slots = [fmt.no_read[0]] if fmt.no_read else []
        if not fmt.no_read and not fmt.no_read_status:
            raise ValueError(f"preset {fmt.name} has no way to say `no read`")
    else:
        slots, k = [], 0
        for r in reads:
            slots.append(slot(r, k))
            if r is not None:
                k += 1
    status = (fmt.no_read_status[0] if no_read and fmt.no_read_status else b"0")
    scalar = {
        "index": (index or "").encode("latin-1"),
        "count": str(len(good)).encode(),
        "gate_time": str(gate_ms or 0).encode(),
        "status": status,
        "recirculations": str(recirculations or 0).encode(),
        "type": (types[0] if types else (_guess_type(good[0]) if good else "")).encode("latin-1"),
        "length": str(len(good[0]) if good else 0).encode(),
        "ignore": b"",
    }
    parts: list[bytes] = []
    if fmt.layout == "fixed":
        slot_iter = iter(slots)
        for f in fmt.fields:
            if f.name == "codes":
                value = fmt.code_separator.join(slots) if fmt.code_separator else b"".join(slots)
                if not fmt.code_separator and len(slots) > 1:
                    raise ValueError("several codes need a code separator")
            elif f.name == "code":
                value = next(slot_iter, b"")
            else:
                value = scalar[f.name]
            if f.width is not None:
                if len(value) > f.width:
                    raise ValueError(f"{f.name} {value!r} is wider than {f.width}")
                numeric = f.name in _NUMERIC or (f.name in ("index", "status") and value.isdigit())
                value = value.rjust(f.width, b"0") if numeric else value.ljust(f.width, fmt.pad)
            parts.append(value)
        if next(slot_iter, None) is not None:
            raise ValueError("more codes than code slots")
        body = b"".join(parts)
    else:
        n_code_fields = sum(f.name == "code" for f in fmt.fields)
        if "codes" not in fmt.names and len(slots) > n_code_fields:
            raise ValueError("more codes than code slots")
        slot_iter = iter(slots)
        for f in fmt.fields:
            if f.name == "codes":
                parts.append(fmt.code_separator.join(slots))
            elif f.name == "code":
                parts.append(next(slot_iter, b""))
            else:
                parts.append(scalar[f.name])
        for f, p in zip(fmt.fields, parts):
            if f.name not in ("code", "codes") and fmt.field_separator and fmt.field_separator in p:
                raise ValueError(f"{f.name} {p!r} contains the field separator")
        body = fmt.field_separator.join(parts)
    body = fmt.header + body + fmt.terminator
    if len(fmt.start) + len(body) + len(fmt.stop) > fmt.max_frame:
        raise ValueError(f"telegram of {len(body)} bytes exceeds max_frame {fmt.max_frame}")
    return fmt.start + body + fmt.stop if framed else body
