"""PLC telegrams, sans I/O: TOML presets, encoding, decoding and stream splitting.

Nothing here touches a socket or a clock. A preset (plc/presets/*.toml, docs/plc.md "Presets")
says how each telegram of the message set is laid out: binary records with a byte order, or
fixed-width ASCII fields between a start and a stop byte, with the offset and width of every
field. `TelegramCodec` turns a `Telegram` into bytes and back; `TelegramSplitter` cuts a TCP
byte stream into telegrams whatever way the stream was split or coalesced.

    codec = TelegramCodec(load_preset("s7_binary"))
    data = codec.encode(Telegram("sort_instruction", seq=7, tracking_id=42, chute=5))
    splitter = TelegramSplitter(codec)
    for item in splitter.feed(data[:5]) + splitter.feed(data[5:]):
        ...                                        # Telegram(...) or Malformed(...)
"""
from __future__ import annotations

import re
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRESET_DIR", "MESSAGE_FIELDS", "PresetError", "Preset", "Telegram", "Malformed",
           "TelegramCodec", "TelegramSplitter", "load_preset", "preset_names"]

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# The message set: each telegram type and the fields it carries besides the header's `seq`.
#   sort_instruction  host -> PLC   where to divert a parcel (acknowledged by the PLC)
#   sort_report       PLC -> host   what happened at the divert point (acknowledged by the host)
#   chute_status      PLC -> host   a chute's state (acknowledged by the host)
#   life              both ways     keep-alive with a counter (never acknowledged)
#   ack               both ways     acknowledges the telegram whose sequence number is ack_seq
MESSAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "sort_instruction": ("tracking_id", "chute", "alt_chute", "reason"),
    "sort_report": ("tracking_id", "chute", "outcome"),
    "chute_status": ("chute", "state"),
    "life": ("counter",),
    "ack": ("ack_seq",),
}
HEADER_FIELDS = ("length", "type", "seq")
_BINARY_TYPES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h",
                 "i32": "i", "i64": "q"}
_CONTROL = {"NUL": 0, "STX": 2, "ETX": 3, "CR": 13, "LF": 10, "EOT": 4, "ACK": 6, "NAK": 21}
_TOKEN = re.compile(r"<([A-Z]{2,3}|x[0-9A-Fa-f]{2})>")


class PresetError(ValueError):
    """A preset that cannot be used, with the file and the key at fault."""


class Telegram:
    """One telegram: its type name, sequence number, and the fields of its type."""
    __slots__ = ("type", "seq", "fields")

    def __init__(self, type: str, seq: int = 0, **fields: int):
        self.type, self.seq, self.fields = type, seq, fields

    @classmethod
    def of(cls, type_: str, seq: int, fields: dict) -> "Telegram":
        t = cls.__new__(cls)
        t.type, t.seq, t.fields = type_, seq, fields
        return t

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    def __eq__(self, other) -> bool:
        return isinstance(other, Telegram) and (self.type, self.seq, self.fields) == (
            other.type, other.seq, other.fields)

    def __repr__(self) -> str:
        return f"Telegram({self.type!r}, seq={self.seq}, {self.fields})"


@dataclass(frozen=True)
class Malformed:
    """Bytes that are not a telegram of the preset: why, and the bytes (for the log)."""
    reason: str
    data: bytes


@dataclass(frozen=True)
class FieldSpec:
    name: str
    offset: int
    size: int            # bytes (binary) or characters (ASCII)
    fmt: str = ""        # struct code (binary)


@dataclass(frozen=True)
class Layout:
    type: str
    code: int | str
    length: int          # whole telegram, framing bytes excluded
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True)
class Preset:
    """A parsed preset (see docs/plc.md for the TOML keys)."""
    name: str
    description: str
    style: str                      # "binary" or "ascii"
    byte_order: str                 # "big" or "little" (binary)
    start: bytes                    # ASCII framing
    stop: bytes
    header: tuple[FieldSpec, ...]
    layouts: dict[str, Layout]
    max_length: int
    session: dict[str, float]
    path: str

    def describe(self) -> str:
        if self.style == "binary":
            return (f"binary, {self.byte_order}-endian, header "
                    f"{'+'.join(f.name for f in self.header)}, telegrams "
                    + ", ".join(f"{t.type} {t.length} B" for t in self.layouts.values()))
        return (f"ASCII fixed-width between {self.start!r} and {self.stop!r}, telegrams "
                + ", ".join(f"{t.type} {t.length} chars" for t in self.layouts.values()))


SESSION_DEFAULTS = {"window": 256, "ack_timeout_ms": 500.0, "max_resends": 3,
                    "life_interval_ms": 1000.0, "life_timeout_ms": 3000.0}


def _escapes(text: str, where: str) -> bytes:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("x"):
            return chr(int(name[1:], 16))
        if name not in _CONTROL:
            raise PresetError(f"{where}: unknown control name <{name}>")
        return chr(_CONTROL[name])
    return _TOKEN.sub(sub, text).encode("latin-1")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A bundled preset by name, or a preset file. Raises PresetError naming file and key."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise PresetError(f"unknown preset {name_or_path!r} (bundled: "
                              f"{', '.join(preset_names())})")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise PresetError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: {e}") from None
    return parse_preset(data, str(path))


def _get(table: dict, key: str, where: str, kind, default=None):
    if key not in table:
        if default is None:
            raise PresetError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PresetError(f"{where}: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _fields(specs: list, style: str, order: str, start: int, where: str) -> tuple[FieldSpec, ...]:
    out, pos = [], start
    if not isinstance(specs, list):
        raise PresetError(f"{where}: fields must be a list of tables")
    for i, spec in enumerate(specs):
        w = f"{where}.fields[{i}]"
        if not isinstance(spec, dict):
            raise PresetError(f"{w}: must be a table")
        name = _get(spec, "name", w, str)
        offset = _get(spec, "offset", w, int, pos)
        if offset < pos:
            raise PresetError(f"{w} ({name}): offset {offset} overlaps the previous field")
        if style == "binary":
            t = _get(spec, "type", w, str)
            if t not in _BINARY_TYPES:
                raise PresetError(f"{w} ({name}): type {t!r} (known: {', '.join(_BINARY_TYPES)})")
            fs = FieldSpec(name, offset, struct.calcsize(_BINARY_TYPES[t]), _BINARY_TYPES[t])
        else:
            width = _get(spec, "width", w, int)
            if not 1 <= width <= 20:
                raise PresetError(f"{w} ({name}): width must be within 1..20")
            fs = FieldSpec(name, offset, width)
        out.append(fs)
        pos = offset + fs.size
    return tuple(out)


def parse_preset(data: dict, path: str = "<preset>") -> Preset:
    """A preset from its TOML tables (see load_preset)."""
    meta = data.get("preset", {})
    framing = data.get("framing")
    if not isinstance(framing, dict):
        raise PresetError(f"{path}: missing table [framing]")
    style = _get(framing, "style", f"{path}: [framing]", str)
    if style not in ("binary", "ascii"):
        raise PresetError(f"{path}: [framing] style must be \"binary\" or \"ascii\", got {style!r}")
    order = _get(framing, "byte_order", f"{path}: [framing]", str, "big")
    if order not in ("big", "little"):
        raise PresetError(f"{path}: [framing] byte_order must be \"big\" or \"little\"")
    start = _escapes(_get(framing, "start", f"{path}: [framing]", str, ""), f"{path}: [framing] start")
    stop = _escapes(_get(framing, "stop", f"{path}: [framing]", str, ""), f"{path}: [framing] stop")
    if style == "ascii" and (len(start) != 1 or len(stop) != 1 or start == stop):
        raise PresetError(f"{path}: [framing] an ASCII preset needs one start and one (other) "
                          "stop byte")
    header = _fields(_get(framing, "header", f"{path}: [framing]", list), style, order, 0,
                     f"{path}: [framing] header")
    names = [f.name for f in header]
    for need in ("type", "seq") + (("length",) if style == "binary" else ()):
        if need not in names:
            raise PresetError(f"{path}: [framing] header: needs a {need!r} field")
    for f in header:
        if f.name not in HEADER_FIELDS:
            raise PresetError(f"{path}: [framing] header: unknown field {f.name!r} "
                              f"(known: {', '.join(HEADER_FIELDS)})")
    header_end = max(f.offset + f.size for f in header)
    types = data.get("types")
    if not isinstance(types, dict):
        raise PresetError(f"{path}: missing table [types]")
    tel = data.get("telegrams", {})
    layouts = {}
    codes = set()
    for name, wanted in MESSAGE_FIELDS.items():
        if name not in types:
            raise PresetError(f"{path}: [types] {name}: missing (every type of the message set "
                              "needs a code)")
        code = types[name]
        if style == "binary" and not isinstance(code, int) or style == "ascii" and not isinstance(code, str):
            raise PresetError(f"{path}: [types] {name}: must be "
                              f"{'an integer' if style == 'binary' else 'a string'}")
        if code in codes:
            raise PresetError(f"{path}: [types] {name}: code {code!r} used twice")
        codes.add(code)
        where = f"{path}: [telegrams.{name}]"
        spec = tel.get(name, {})
        fields = _fields(spec.get("fields", []), style, order, header_end, where)
        have = [f.name for f in fields]
        for f in have:
            if f not in wanted and f != "spare":
                raise PresetError(f"{where}: unknown field {f!r} (known: {', '.join(wanted)}, spare)")
        missing = [f for f in wanted if f not in have and not (name == "sort_instruction"
                                                              and f in ("alt_chute", "reason"))]
        if missing:
            raise PresetError(f"{where}: missing field(s) {', '.join(missing)}")
        end = max([f.offset + f.size for f in fields] + [header_end])
        length = _get(spec, "length", where, int, end)
        if length < end:
            raise PresetError(f"{where}: length {length} is shorter than its fields ({end})")
        if style == "ascii" and isinstance(code, str):
            tf = next(f for f in header if f.name == "type")
            if len(code) > tf.size:
                raise PresetError(f"{path}: [types] {name}: {code!r} wider than the type field")
        layouts[name] = Layout(name, code, length, fields)
    session = dict(SESSION_DEFAULTS)
    for k, v in data.get("session", {}).items():
        if k not in SESSION_DEFAULTS or not isinstance(v, (int, float)) or isinstance(v, bool):
            raise PresetError(f"{path}: [session] {k}: unknown key or not a number "
                              f"(known: {', '.join(SESSION_DEFAULTS)})")
        session[k] = v
    max_length = _get(framing, "max_length", f"{path}: [framing]", int,
                      max(t.length for t in layouts.values()))
    return Preset(name=meta.get("name", Path(path).stem), description=meta.get("description", ""),
                  style=style, byte_order=order, start=start, stop=stop, header=header,
                  layouts=layouts, max_length=max_length, session=session, path=path)


class TelegramCodec:
    """Encodes and decodes single telegrams of one preset (framing bytes excluded for ASCII:
    `encode` adds them, `decode` expects the bytes between them)."""

    def __init__(self, preset: Preset):
        self.preset = preset
        self.binary = preset.style == "binary"
        self._by_code = {lay.code: lay for lay in preset.layouts.values()}
        self._hdr = {f.name: f for f in preset.header}
        e = ">" if preset.byte_order == "big" else "<"
        self._structs: dict[str, tuple[struct.Struct, tuple[str, ...]]] = {}
        # per type: struct, and for `pack` the position of each value of MESSAGE_FIELDS order
        self._packers: dict[str, tuple] = {}
        self._unpackers: dict[Any, tuple] = {}
        if self.binary:
            for lay in preset.layouts.values():
                st_, names = self._compile(e, list(preset.header) + list(lay.fields), lay.length)
                self._structs[lay.type] = (st_, names)
                order = MESSAGE_FIELDS[lay.type]
                # argument i of st.pack comes from: header constant, seq, or value index
                src = []
                for n in names:
                    if n == "length":
                        src.append(("c", lay.length))
                    elif n == "type":
                        src.append(("c", lay.code))
                    elif n == "seq":
                        src.append(("s", 0))
                    elif n in order:
                        src.append(("v", order.index(n)))
                    else:
                        src.append(("c", 0))
                # generated once per type: straight-line argument lists, no loop per telegram
                args = ", ".join(repr(v) if k == "c" else "seq" if k == "s" else f"values[{v}]"
                                 for k, v in src)
                self._packers[lay.type] = eval(f"lambda seq, values: pack({args})",
                                               {"pack": st_.pack})
                fields = ", ".join(f"{n!r}: v[{i}]" for i, n in enumerate(names)
                                   if n not in ("length", "type", "seq", "spare"))
                len_i = names.index("length") if "length" in names else -1
                check = f"v[{len_i}] == {lay.length}" if len_i >= 0 else "True"
                self._unpackers[lay.code] = (lay.length, eval(
                    f"lambda buf, pos: (lambda v: of({lay.type!r}, v[{names.index('seq')}], "
                    f"{{{fields}}}) if {check} else None)(unpack_from(buf, pos))",
                    {"of": Telegram.of, "unpack_from": st_.unpack_from}))
            tf = next(f for f in preset.header if f.name == "type")
            self._type_off, self._type_st = tf.offset, struct.Struct(e + tf.fmt)
            h = sorted(preset.header, key=lambda f: f.offset)
            self._head = self._compile(e, h, max(f.offset + f.size for f in h))
        self.seq_modulo = self._seq_modulo()

    @staticmethod
    def _compile(e: str, specs: list[FieldSpec], length: int):
        specs = sorted(specs, key=lambda f: f.offset)
        fmt, pos = e, 0
        for f in specs:
            if f.offset > pos:
                fmt += f"{f.offset - pos}x"
            fmt += f.fmt
            pos = f.offset + f.size
        if length > pos:
            fmt += f"{length - pos}x"
        return struct.Struct(fmt), tuple(f.name for f in specs)

    def _seq_modulo(self) -> int:
        f = self._hdr["seq"]
        return 10 ** f.size if not self.binary else 1 << (8 * f.size)

    def length_of(self, type_: str) -> int:
        return self.preset.layouts[type_].length

    # -- encoding --------------------------------------------------------------------------
    def pack(self, type_: str, seq: int, values: tuple) -> bytes:
        """`encode` from the field values in MESSAGE_FIELDS order (the sessions' fast path)."""
        p = self._packers.get(type_)
        if p is None:
            order = MESSAGE_FIELDS[type_]
            return self.encode(Telegram.of(type_, seq, dict(zip(order, values))))
        try:
            return p(seq, values)
        except (struct.error, IndexError) as e:
            raise ValueError(f"{type_}: a value does not fit its field: {e}") from None

    def encode(self, t: Telegram) -> bytes:
        """The bytes of one telegram (with STX/ETX for ASCII presets). Raises ValueError for
        an unknown type or a value that does not fit its field."""
        lay = self.preset.layouts.get(t.type)
        if lay is None:
            raise ValueError(f"unknown telegram type {t.type!r}")
        values = {**t.fields, "seq": t.seq, "length": lay.length, "type": lay.code}
        if self.binary:
            st, names = self._structs[t.type]
            try:
                return st.pack(*[int(values.get(n, 0)) for n in names])
            except struct.error as e:
                raise ValueError(f"{t.type}: a value does not fit its field: {e}") from None
        buf = bytearray(b"0" * lay.length)
        for f in list(self.preset.header) + list(lay.fields):
            v = values.get(f.name, 0)
            if f.name == "type":
                text = str(v).ljust(f.size)
            else:
                text = str(int(v)).rjust(f.size, "0")
                if int(v) < 0 or len(text) > f.size:
                    raise ValueError(f"{t.type}.{f.name}: {v} does not fit {f.size} digits")
            buf[f.offset:f.offset + f.size] = text.encode("ascii")
        return self.preset.start + bytes(buf) + self.preset.stop

    # -- decoding --------------------------------------------------------------------------
    def decode_at(self, buf, pos: int, length: int) -> Telegram | None:
        """Binary: the telegram of `length` bytes at buf[pos:], or None when it is not one."""
        code = self._type_st.unpack_from(buf, pos + self._type_off)[0]
        u = self._unpackers.get(code)
        if u is None or u[0] != length:
            return None
        return u[1](buf, pos)

    def decode(self, data: bytes) -> Telegram | Malformed:
        """One telegram from its bytes (without STX/ETX for ASCII presets)."""
        if self.binary:
            try:
                head = dict(zip(self._head[1], self._head[0].unpack_from(data)))
            except struct.error:
                return Malformed("truncated", bytes(data))
            lay = self._by_code.get(head["type"])
            if lay is None:
                return Malformed("unknown_type", bytes(data))
            if len(data) != lay.length or head["length"] != lay.length:
                return Malformed("bad_length", bytes(data))
            st, names = self._structs[lay.type]
            values = dict(zip(names, st.unpack(data)))
        else:
            tf = self._hdr["type"]
            code = bytes(data[tf.offset:tf.offset + tf.size]).decode("latin-1").rstrip(" ")
            lay = self._by_code.get(code)
            if lay is None:
                return Malformed("unknown_type", bytes(data))
            if len(data) != lay.length:
                return Malformed("bad_length", bytes(data))
            values = {}
            for f in list(self.preset.header) + list(lay.fields):
                if f.name == "type":
                    continue
                text = data[f.offset:f.offset + f.size]
                if not text.isdigit():
                    return Malformed(f"bad_field:{f.name}", bytes(data))
                values[f.name] = int(text)
        seq = values.pop("seq")
        values.pop("length", None)
        values.pop("type", None)
        values.pop("spare", None)
        return Telegram.of(lay.type, seq, values)


class TelegramSplitter:
    """Cuts a byte stream into telegrams. The output depends only on the bytes, never on how
    TCP split or coalesced them. Binary: the header's length field frames each telegram; a
    length outside the preset's telegram lengths is malformed and resynchronises by skipping
    one byte. ASCII: bytes between start and stop; bytes outside a frame are malformed
    (`garbage`), a frame over max_length is malformed (`oversized`)."""

    def __init__(self, codec: TelegramCodec):
        self.codec = codec
        p = codec.preset
        self._buf = bytearray()
        self._lengths = {lay.length for lay in p.layouts.values()}
        self._min = min(self._lengths)
        lf = next((f for f in p.header if f.name == "length"), None)
        self._len_off = lf.offset if lf else 0
        self._len_fmt = ((">" if p.byte_order == "big" else "<") + lf.fmt) if lf else ""
        self._len_end = (lf.offset + lf.size) if lf else 0
        self._len_st = struct.Struct(self._len_fmt) if lf else None

    def reset(self) -> None:
        """Forget a partial telegram (the connection was closed)."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[Telegram | Malformed]:
        self._buf += data
        return self._binary() if self.codec.binary else self._ascii()

    def _binary(self) -> list:
        out, buf, pos = [], self._buf, 0
        n = len(buf)
        garbage = bytearray()
        unpack_len, len_off, lengths = self._len_st.unpack_from, self._len_off, self._lengths
        while n - pos >= self._len_end:
            length = unpack_len(buf, pos + len_off)[0]
            if length not in lengths:
                garbage.append(buf[pos])
                pos += 1
                continue
            if n - pos < length:
                break
            if garbage:
                out.append(Malformed("garbage", bytes(garbage)))
                garbage = bytearray()
            item = self.codec.decode_at(buf, pos, length)
            if item is None:                       # the length fits but the content does not
                garbage.append(buf[pos])
                pos += 1
                continue
            out.append(item)
            pos += length
        if garbage:
            out.append(Malformed("garbage", bytes(garbage)))
        del buf[:pos]
        return out

    def _ascii(self) -> list:
        out, buf = [], self._buf
        start, stop = self.codec.preset.start[0], self.codec.preset.stop[0]
        maxlen = self.codec.preset.max_length
        while buf:
            s = buf.find(start)
            if s < 0:
                out.append(Malformed("garbage", bytes(buf)))
                buf.clear()
                break
            if s > 0:
                out.append(Malformed("garbage", bytes(buf[:s])))
                del buf[:s]
            e = buf.find(stop, 1)
            nxt = buf.find(start, 1)
            if nxt >= 0 and (e < 0 or nxt < e):     # a new start before the stop: cut short
                out.append(Malformed("unterminated", bytes(buf[:nxt])))
                del buf[:nxt]
                continue
            if e < 0:
                if len(buf) > maxlen + 2:
                    out.append(Malformed("oversized", bytes(buf)))
                    buf.clear()
                break
            out.append(self.codec.decode(bytes(buf[1:e])))
            del buf[:e + 1]
        return out
