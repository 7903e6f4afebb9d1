"""OFRecord, OneFlow's record file format: encoder, decoder, writer, reader, sharding, validator.

Pure Python + NumPy: nothing here imports OneFlow, so data can be made and checked on machines
without it, and the format is readable end to end in one file.

The format
----------
A file is a sequence of records with no file header and no checksum::

    record  = length payload
    length  = 8 bytes, little-endian signed int64, the size of payload (must be > 0)
    payload = a serialized ``oneflow.OFRecord`` protocol buffer (proto2)

The messages, from OneFlow's ``oneflow/core/record/record.proto``::

    OFRecord  { map<string, Feature> feature = 1; }
    Feature   { oneof kind { BytesList bytes_list = 1;  FloatList float_list = 2;
                             DoubleList double_list = 3; Int32List int32_list = 4;
                             Int64List int64_list = 5; } }
    XxxList   { repeated <type> value = 1; }     # numeric lists are [packed = true]

A protobuf map is encoded as a repeated entry message ``{key = 1; value = 2}``; every field is a
tag (``field_number << 3 | wire_type``) followed by its value. Packed numeric lists are one
length-delimited field holding the values back to back: int32/int64 as varints (7 bits per byte,
high bit = "more bytes follow"; a negative int32 is sign-extended to 64 bits, hence 10 bytes),
float as 4 and double as 8 little-endian bytes. TensorFlow's ``Example`` uses other field numbers,
so a TFRecord payload is not an OFRecord.

Arrays
------
:func:`encode_record` takes ``name -> array``; the array's dtype picks the list type
(int32 -> int32_list, int64 -> int64_list, float32 -> float_list, float64 -> double_list,
bytes -> bytes_list). Multi-dimensional arrays are flattened in C order: OFRecord stores flat
lists, the reader's decoder gives them their shape back. :func:`decode_record` returns 1-D arrays
of those dtypes (bytes lists as ``list[bytes]``).

Files and shards
----------------
OneFlow's ``OFRecordReader`` reads ``data_dir/<prefix><i>`` for ``i < data_part_num``, zero-padded
to ``part_name_suffix_length`` digits when that is > 0 (``part-0`` by default, ``part-00000``
with 5). Under several ranks it gives each rank a contiguous block of parts
(:func:`rank_part_ranges`). It aborts the whole process (glog ``Check failed``, SIGABRT) on a
missing, empty or corrupt part and on a record of length 0, hence :func:`validate_data_dir`.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "DataError",
    "Schema",
    "encode_record",
    "decode_record",
    "encode_varints",
    "encode_packed_entry",
    "explain_record",
    "OFRecordWriter",
    "iter_raw_records",
    "iter_records",
    "read_records",
    "write_shards",
    "part_paths",
    "rank_part_ranges",
    "validate_data_dir",
    "ValidationSummary",
]

FeatureValue = Union[np.ndarray, Sequence, bytes, str, int, float]

_HEADER = struct.Struct("<q")

# Field numbers of Feature's oneof, keyed by the NumPy dtype each list type stores.
_BYTES, _FLOAT, _DOUBLE, _INT32, _INT64 = 1, 2, 3, 4, 5
_KIND_DTYPE = {
    _FLOAT: np.dtype("<f4"),
    _DOUBLE: np.dtype("<f8"),
    _INT32: np.dtype(np.int32),
    _INT64: np.dtype(np.int64),
}
_DTYPE_KIND = {np.dtype(np.int32): _INT32, np.dtype(np.int64): _INT64,
               np.dtype(np.float32): _FLOAT, np.dtype(np.float64): _DOUBLE}
_KIND_NAME = {_BYTES: "bytes_list", _FLOAT: "float_list", _DOUBLE: "double_list",
              _INT32: "int32_list", _INT64: "int64_list"}

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5


class DataError(ValueError):
    """A data file or directory that OneFlow's reader would crash on (or silently misread)."""


# --------------------------------------------------------------------------------------------------
# Protobuf wire format: just the pieces OFRecord needs.
# --------------------------------------------------------------------------------------------------

_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    """One unsigned varint (lengths and tags; never negative here)."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS: list[bytes] = []
_SMALL_LIMIT = 1 << 16  # covers the token ids of common vocabularies (bert-base: 30,522)


def _encode_varints(values: np.ndarray) -> bytes:
    """Packed varints of a 1-D integer array (this is the hot loop of data making, hence the care)."""
    if values.size == 0:
        return b""
    if values.size <= 512:
        # Short lists (token ids of one record): Python's min/max/join beat NumPy's per-call overhead.
        items = values.tolist()
        lo, hi = min(items), max(items)
        if 0 <= lo and hi < _SMALL_LIMIT:
            if hi < 0x80:
                return bytes(items)
            if not _SMALL_VARINTS:
                _SMALL_VARINTS.extend(_varint(i) for i in range(_SMALL_LIMIT))
            table = _SMALL_VARINTS
            return b"".join([table[i] for i in items])
    # General case, vectorised.
    # Negative numbers are encoded as their 64-bit two's complement, as protobuf does for int32 too.
    u = values.astype(np.int64, copy=False).view(np.uint64)
    top = int(u.max())
    width = (top.bit_length() + 6) // 7
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((u[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)  # [n, width]
    # Bytes each value needs: 1 + how many 7-bit thresholds it reaches.
    nbytes = 1 + (u[:, None] >= (np.uint64(1) << shifts[1:])).sum(axis=1)
    col = np.arange(width)
    groups[col < (nbytes[:, None] - 1)] |= 0x80
    return groups[col < nbytes[:, None]].tobytes()


def _decode_varints(buf) -> np.ndarray:
    """Packed varints -> uint64 array (the caller reinterprets them as int32/int64)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, np.uint64)
    last = b < 0x80
    if not last[-1]:
        raise DataError("a packed integer list ends in the middle of a varint")
    if last.all():
        return b.astype(np.uint64)
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise DataError("a varint is longer than 10 bytes")
    pos = (np.arange(b.size) - np.repeat(starts, lengths)).astype(np.uint64)
    parts = (b & 0x7F).astype(np.uint64) << (pos * np.uint64(7))
    return np.add.reduceat(parts, starts)


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DataError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DataError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, value_start, value_end)`` of one message in ``buf[start:end]``.

    For varints the value's bounds are its bytes; callers re-read them when they need the number.
    """
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise DataError(f"field number 0 at byte {tag_at}")
        if wire == _WIRE_VARINT:
            _, stop = _read_varint(buf, pos, end)
        elif wire == _WIRE_FIXED64:
            stop = pos + 8
        elif wire == _WIRE_FIXED32:
            stop = pos + 4
        elif wire == _WIRE_LEN:
            size, pos = _read_varint(buf, pos, end)
            stop = pos + size
        else:
            raise DataError(f"unsupported wire type {wire} at byte {tag_at}")
        if stop > end:
            raise DataError(f"field {number} at byte {tag_at} runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------

def _as_list(name: str, value: FeatureValue) -> tuple[int, object]:
    """Pick the OFRecord list kind for one feature; return ``(kind, ndarray | list[bytes])``."""
    if type(value) is np.ndarray and value.dtype in _DTYPE_KIND:  # the common case, first
        return _DTYPE_KIND[value.dtype], value.ravel()
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (bytes, bytearray, memoryview, str)) for v in value):
        return _BYTES, [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
    arr = np.asarray(value)
    if arr.dtype.kind in "SO":
        return _BYTES, [bytes(v) for v in arr.ravel()]
    arr = arr.ravel()
    if arr.dtype in _DTYPE_KIND:
        return _DTYPE_KIND[arr.dtype], arr
    # Narrower types widen to the smallest list that holds them exactly.
    if arr.dtype.kind == "b" or arr.dtype in (np.int8, np.int16, np.uint8, np.uint16):
        return _INT32, arr.astype(np.int32)
    if arr.dtype == np.uint32:
        return _INT64, arr.astype(np.int64)
    if arr.dtype == np.float16:
        return _FLOAT, arr.astype(np.float32)
    raise TypeError(f"feature {name!r}: cannot store dtype {arr.dtype} in an OFRecord "
                    "(use int32, int64, float32, float64 or bytes)")


def _encode_feature(kind: int, values) -> bytes:
    if kind == _BYTES:
        body = b"".join(b"\x0a" + _varint(len(v)) + v for v in values)
    else:
        if kind in (_INT32, _INT64):
            packed = _encode_varints(values)
        else:
            packed = values.astype(_KIND_DTYPE[kind], copy=False).tobytes()
        # Protobuf writes nothing for an empty packed field.
        body = b"\x0a" + _varint(len(packed)) + packed if packed else b""
    return bytes([(kind << 3) | _WIRE_LEN]) + _varint(len(body)) + body


def encode_varints(values: np.ndarray) -> bytes:
    """The packed body of an int32/int64 list: each value as a varint, back to back."""
    return _encode_varints(np.asarray(values).ravel())


_KIND_BY_NAME = {v: k for k, v in _KIND_NAME.items()}


def encode_packed_entry(name: str, list_type: str, packed: bytes) -> bytes:
    """One ``feature`` map entry for a numeric list whose packed body is already built.

    ``list_type`` is ``int32_list``, ``int64_list``, ``float_list`` or ``double_list``; ``packed``
    the varints (:func:`encode_varints`) or little-endian values. Concatenated entries form a
    record, byte-identical to :func:`encode_record`: this lets a fixed-layout encoder skip the
    per-array dispatch in a hot loop.
    """
    return _entry_prefix(name, list_type, len(packed)) + packed


@functools.lru_cache(maxsize=4096)
def _entry_prefix(name: str, list_type: str, size: int) -> bytes:
    """Everything of a map entry before its packed values: it depends on the sizes only."""
    kind = _KIND_BY_NAME[list_type]
    body_head = b"\x0a" + _varint(size) if size else b""
    body_size = len(body_head) + size
    feature_head = bytes([(kind << 3) | _WIRE_LEN]) + _varint(body_size)
    key = name.encode("utf-8")
    entry_head = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(feature_head) + body_size)
    entry_size = len(entry_head) + len(feature_head) + body_size
    return b"\x0a" + _varint(entry_size) + entry_head + feature_head + body_head


def encode_record(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialize ``name -> values`` as one OFRecord payload (without the 8-byte length).

    Values: an ndarray (its dtype picks the list type, see the module docstring), a list or scalar
    (converted with ``np.asarray``, so Python ints become int64 and floats float64), or bytes / str /
    a list of them (a bytes_list; str is stored as UTF-8). Features are written in the mapping's
    order, so the same mapping always gives the same bytes.
    """
    if not features:
        raise DataError("an OFRecord needs at least one feature: an empty record has length 0, "
                        "which OneFlow's reader rejects")
    out = []
    for name, value in features.items():
        key = name.encode("utf-8")
        feature = _encode_feature(*_as_list(name, value))
        entry = b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(feature)) + feature
        out.append(b"\x0a" + _varint(len(entry)) + entry)
    return b"".join(out)


def _decode_list(kind: int, buf, start: int, end: int):
    if kind == _BYTES:
        return [bytes(buf[s:e]) for number, wire, s, e in _fields(buf, start, end)
                if number == 1 and wire == _WIRE_LEN]
    dtype = _KIND_DTYPE[kind]
    chunks = []
    for number, wire, s, e in _fields(buf, start, end):
        if number != 1:
            continue  # unknown fields are legal protobuf; ignore them like protobuf does
        if wire == _WIRE_LEN:  # packed
            raw = buf[s:e]
        elif (wire == _WIRE_VARINT and kind in (_INT32, _INT64)) or (
                wire == _WIRE_FIXED32 and kind == _FLOAT) or (wire == _WIRE_FIXED64 and kind == _DOUBLE):
            raw = buf[s:e]  # one unpacked element; proto2 parsers accept both encodings
        else:
            raise DataError(f"{_KIND_NAME[kind]} holds wire type {wire} at byte {s}")
        if kind in (_INT32, _INT64):
            chunks.append(_decode_varints(raw).view(np.int64).astype(dtype))
        else:
            if len(raw) % dtype.itemsize:
                raise DataError(f"{_KIND_NAME[kind]} at byte {s} is {len(raw)} bytes, "
                                f"not a multiple of {dtype.itemsize}")
            chunks.append(np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")))
    if not chunks:
        return np.zeros(0, dtype)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _scan_canonical(buf: bytes) -> dict[str, tuple[int, int, int]] | None:
    """Locate each feature's values in a payload laid out the way protobuf (and we) write it.

    Returns ``name -> (kind, start, end)``: for numeric lists the packed values, for bytes lists
    the whole BytesList message. Returns None as soon as anything differs from that canonical
    layout (unpacked lists, unknown fields, garbage): the general parser then decides. This is
    the fast path of decoding and validation; the general parser is the reference.
    """
    n, pos, out = len(buf), 0, {}

    def varint(pos: int, end: int) -> tuple[int, int]:
        lo = buf[pos]
        if lo < 0x80:
            return lo, pos + 1
        hi = buf[pos + 1]
        if hi < 0x80:
            return (lo & 0x7F) | (hi << 7), pos + 2
        return _read_varint(buf, pos, end)

    try:
        while pos < n:
            if buf[pos] != 0x0A:
                return None
            size, pos = varint(pos + 1, n)
            end = pos + size
            if end > n or buf[pos] != 0x0A:
                return None
            klen, pos = varint(pos + 1, end)
            key = buf[pos:pos + klen]
            pos += klen
            if pos + 2 > end or buf[pos] != 0x12:
                return None
            flen, pos = varint(pos + 1, end)
            if pos + flen != end or flen < 2:
                return None
            tag = buf[pos]
            kind = tag >> 3
            if tag & 7 != _WIRE_LEN or kind not in _KIND_NAME:
                return None
            blen, pos = varint(pos + 1, end)
            if pos + blen != end:
                return None
            if blen and kind != _BYTES:
                if buf[pos] != 0x0A:
                    return None
                plen, pos = varint(pos + 1, end)
                if pos + plen != end:
                    return None
            out[str(key, "utf-8")] = (kind, pos, end)
            pos = end
    except (IndexError, DataError, UnicodeDecodeError):
        return None
    return out


def _decode_packed(kind: int, raw) -> np.ndarray:
    """The values of one canonical packed body (see :func:`_scan_canonical`)."""
    dtype = _KIND_DTYPE[kind]
    if kind in (_INT32, _INT64):
        return _decode_varints(raw).view(np.int64).astype(dtype)
    if len(raw) % dtype.itemsize:
        raise DataError(f"a {_KIND_NAME[kind]} of {len(raw)} bytes is not a multiple of {dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def decode_record(data: bytes) -> dict[str, object]:
    """Parse one OFRecord payload into ``name -> 1-D ndarray`` (``list[bytes]`` for bytes lists).

    Raises :class:`DataError` (with the byte offset inside the payload) when the bytes are not a
    well-formed OFRecord.
    """
    data = bytes(data)
    scan = _scan_canonical(data)
    if scan is not None:
        try:
            return {name: (_decode_list(kind, data, s, e) if kind == _BYTES else _decode_packed(kind, data[s:e]))
                    for name, (kind, s, e) in scan.items()}
        except DataError:
            pass  # let the general parser say where
    buf = memoryview(data)
    record: dict[str, object] = {}
    for number, wire, start, end in _fields(buf, 0, len(buf)):
        if number != 1:
            continue
        if wire != _WIRE_LEN:
            raise DataError(f"map entry at byte {start} has wire type {wire}, expected 2")
        key, value = "", None
        for n, w, s, e in _fields(buf, start, end):
            if n == 1 and w == _WIRE_LEN:
                try:
                    key = str(buf[s:e], "utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"feature name at byte {s} is not UTF-8") from None
            elif n == 2 and w == _WIRE_LEN:
                for kind, kw, ks, ke in _fields(buf, s, e):
                    if kind in _KIND_NAME and kw == _WIRE_LEN:
                        value = _decode_list(kind, buf, ks, ke)  # oneof: the last one wins
        if value is None:
            raise DataError(f"feature {key!r} (map entry at byte {start}) holds no value list")
        record[key] = value
    return record


def explain_record(data: bytes, with_header: bool = True) -> list[tuple[int, str, str]]:
    """Label every byte of one record, for reading it by eye: ``[(offset, hex bytes, meaning)]``.

    ``data`` is a payload as :func:`encode_record` makes it (canonical layout); with
    ``with_header`` the rows start with the 8-byte length that precedes it in a file.
    """
    data = bytes(data)
    rows: list[tuple[int, str, str]] = []
    base = 0
    if with_header:
        rows.append((0, _HEADER.pack(len(data)).hex(" "), f"record length = {len(data)} (int64, little-endian)"))
        base = 8

    def row(start: int, end: int, meaning: str) -> None:
        rows.append((base + start, data[start:end].hex(" "), meaning))

    def length_prefix(pos: int, what: str, tag_meaning: str) -> int:
        size, after = _read_varint(data, pos + 1, len(data))
        row(pos, after, f"{tag_meaning}; {what} = {size} bytes")
        return after

    pos = 0
    scan = _scan_canonical(data)
    if scan is None:
        raise DataError("explain_record needs the canonical layout that encode_record writes")
    while pos < len(data):
        pos = length_prefix(pos, "entry", "field 1 (feature map entry), wire type 2")
        klen, after = _read_varint(data, pos + 1, len(data))
        key = data[after:after + klen].decode("utf-8")
        row(pos, after, f"  field 1 (key), wire type 2; {klen} bytes")
        row(after, after + klen, f"  key = {key!r}")
        pos = length_prefix(after + klen, "Feature", "  field 2 (value: a Feature), wire type 2")
        kind = data[pos] >> 3
        pos = length_prefix(pos, _KIND_NAME[kind], f"    field {kind} ({_KIND_NAME[kind]}), wire type 2")
        _, start, end = scan[key]
        if kind != _BYTES and end > start:
            row(pos, start, "      field 1 (value, packed), wire type 2; length")
        if end > start:
            values = _decode_list(kind, data, start, end) if kind == _BYTES else _decode_packed(kind, data[start:end])
            shown = values if kind == _BYTES else values.tolist()
            how = {_INT32: "varints", _INT64: "varints", _FLOAT: "float32 LE", _DOUBLE: "float64 LE",
                   _BYTES: "bytes"}[kind]
            row(start if kind != _BYTES else pos, end, f"      values ({how}) = {shown}")
        pos = end
    return rows


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

class OFRecordWriter:
    """Write records to one OFRecord file: ``with OFRecordWriter(path) as w: w.write({...})``.

    ``write`` takes a feature mapping (encoded with :func:`encode_record`) or an already encoded
    payload (``bytes``), which lets worker processes do the encoding.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._file = open(self.path, "wb")

    def write(self, features: Mapping[str, FeatureValue] | bytes) -> None:
        payload = bytes(features) if isinstance(features, (bytes, bytearray, memoryview)) \
            else encode_record(features)
        if not payload:
            raise DataError(f"{self.path}: refusing to write an empty record (OneFlow rejects length 0)")
        self._file.write(_HEADER.pack(len(payload)))
        self._file.write(payload)
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "OFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte_offset, payload)`` for each record of an OFRecord file, checking the framing."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        offset = index = 0
        while offset < size:
            length = _check_frame(path, mm, size, offset, index)
            yield offset, mm[offset + 8:offset + 8 + length]
            offset += 8 + length
            index += 1


def _check_frame(path: Path, buf, size: int, offset: int, index: int) -> int:
    """Return the payload length of the record at ``offset``; raise DataError if the framing is bad."""
    where = f"{path}: record {index} at byte offset {offset}"
    if size - offset < 8:
        raise DataError(f"{where}: truncated length header ({size - offset} trailing bytes, need 8); "
                        "the file was cut short")
    (length,) = _HEADER.unpack_from(buf, offset)
    if length <= 0:
        raise DataError(f"{where}: record length {length} is not positive (garbage bytes or not an "
                        "OFRecord file)")
    if length > size - offset - 8:
        raise DataError(f"{where}: record claims {length} bytes but only {size - offset - 8} remain "
                        "(a truncated file, or garbage bytes read as a length)")
    return length


def iter_records(path: str | os.PathLike) -> Iterator[dict[str, object]]:
    """Yield every record of one OFRecord file, decoded (see :func:`decode_record`)."""
    for index, (offset, payload) in enumerate(iter_raw_records(path)):
        try:
            yield decode_record(payload)
        except DataError as exc:
            raise DataError(f"{path}: record {index} at byte offset {offset}: payload is not a valid "
                            f"OFRecord ({exc})") from None


def read_records(paths: Iterable[str | os.PathLike]) -> Iterator[dict[str, object]]:
    """Yield the records of several files in order."""
    for path in paths:
        yield from iter_records(path)


def part_paths(data_dir: str | os.PathLike, num_parts: int, prefix: str = "part-",
               suffix_length: int | None = None) -> list[Path]:
    """The file names OneFlow's reader opens: ``prefix + index``, zero-padded to ``suffix_length``."""
    width = suffix_length if suffix_length and suffix_length > 0 else 0
    return [Path(data_dir) / f"{prefix}{i:0{width}d}" for i in range(num_parts)]


def rank_part_ranges(data_part_num: int, num_ranks: int) -> list[range]:
    """Which parts each rank reads: OneFlow splits the parts into contiguous, balanced blocks
    (the first ``data_part_num % num_ranks`` ranks get one extra part)."""
    if num_ranks > data_part_num:
        raise DataError(f"{data_part_num} data parts cannot be shared by {num_ranks} ranks")
    base, extra = divmod(data_part_num, num_ranks)
    ranges, start = [], 0
    for r in range(num_ranks):
        stop = start + base + (1 if r < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def write_shards(records: Iterable[Mapping[str, FeatureValue] | bytes], data_dir: str | os.PathLike,
                 num_parts: int, prefix: str = "part-", suffix_length: int | None = None) -> list[Path]:
    """Write records round-robin into ``num_parts`` files (record ``i`` -> part ``i % num_parts``).

    Files are written under temporary names and renamed at the end, so an interrupted run never
    leaves part files that look complete. Fewer records than parts is an error: the empty parts
    would crash OneFlow's reader. Returns the part paths.
    """
    if num_parts < 1:
        raise DataError(f"num_parts must be >= 1 (got {num_parts})")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = part_paths(data_dir, num_parts, prefix, suffix_length)
    tmp = [p.with_name(p.name + ".tmp") for p in paths]
    writers = [OFRecordWriter(t) for t in tmp]
    try:
        for i, record in enumerate(records):
            writers[i % num_parts].write(record)
    except BaseException:
        for w, t in zip(writers, tmp):
            w.close()
            t.unlink(missing_ok=True)
        raise
    for w in writers:
        w.close()
    written = sum(w.count for w in writers)
    if written < num_parts:
        for t in tmp:
            t.unlink(missing_ok=True)
        raise DataError(f"only {written} records for {num_parts} parts: empty part files crash "
                        f"OneFlow's reader; use at most {max(written, 1)} parts or more data")
    for t, p in zip(tmp, paths):
        os.replace(t, p)
    return paths


# --------------------------------------------------------------------------------------------------
# Schema and validation
# --------------------------------------------------------------------------------------------------

class Schema(dict):
    """``name -> (numpy dtype, length)``: what every record of a data set must hold.

    ``length`` is the element count OneFlow's ``OFRecordRawDecoder`` will be asked for (its
    ``shape``); the dtype is what the loader decodes to (``bytes`` for a bytes_list).
    """

    def __init__(self, fields: Mapping[str, tuple] | Iterable[tuple[str, tuple]] = (), **kwargs):
        super().__init__()
        items = dict(fields, **kwargs)
        for name, (dtype, length) in items.items():
            length = int(np.prod(length)) if isinstance(length, (tuple, list)) else int(length)
            if length < 0:
                raise ValueError(f"schema feature {name!r}: negative length {length}")
            self[name] = (np.dtype(dtype), length)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: {d.name}[{n}]" for k, (d, n) in self.items())
        return f"Schema({body})"


@dataclass
class ValidationSummary:
    """What :func:`validate_data_dir` found: record counts per part and per rank."""
    data_dir: Path
    paths: list[Path]
    records_per_part: list[int]
    num_bytes: int
    num_ranks: int = 1
    records_per_rank: list[int] = field(default_factory=list)

    @property
    def num_records(self) -> int:
        return sum(self.records_per_part)

    def __str__(self) -> str:
        return (f"{self.data_dir}: {len(self.paths)} parts, {self.num_records} records, "
                f"{self.num_bytes / 1e6:.1f} MB; records per rank ({self.num_ranks}): {self.records_per_rank}")


def _check_features(record: Mapping[str, object], schema: Schema, vocab_size: int | None,
                    id_features: Sequence[str],
                    value_ranges: Mapping[str, tuple[float, float]]) -> str | None:
    """Return a description of the first schema violation in ``record``, or None."""
    for name, (dtype, length) in schema.items():
        if name not in record:
            return f"feature {name!r} is missing (the record has: {', '.join(sorted(record)) or 'nothing'})"
        value = record[name]
        is_bytes = isinstance(value, list)
        if (dtype.kind in "SOV") != is_bytes:
            stored = "a bytes_list" if is_bytes else f"a numeric list ({value.dtype})"
            return f"feature {name!r} is {stored}, but the schema expects {dtype}"
        if len(value) != length:
            return f"feature {name!r} has {len(value)} values, expected {length}"
        if vocab_size is not None and name in id_features and len(value):
            bad = np.flatnonzero((value < 0) | (value >= vocab_size))
            if bad.size:
                i = int(bad[0])
                return (f"feature {name!r} holds token id {value[i]} at position {i}, outside the "
                        f"vocabulary [0, {vocab_size}) (data made with another vocab.txt?)")
        if name in value_ranges and len(value):
            lo, hi = value_ranges[name]
            bad = np.flatnonzero((value < lo) | (value >= hi))
            if bad.size:
                i = int(bad[0])
                return f"feature {name!r} holds {value[i]} at position {i}, outside [{lo}, {hi})"
    return None


class _BatchChecker:
    """Validates records in batches: structure per record, numeric lists for all records at once.

    Decoding varints record by record costs ~25 NumPy calls each; concatenating the int lists of a
    few thousand records and decoding them in one pass makes validation ~10x faster.
    """

    def __init__(self, schema: Schema, vocab_size: int | None, id_features: Sequence[str],
                 value_ranges: Mapping[str, tuple[float, float]]):
        self.schema, self.vocab_size = schema, vocab_size
        self.id_features, self.value_ranges = set(id_features), value_ranges
        self.ranges = {}
        for name in schema:
            lo, hi = -np.inf, np.inf
            if vocab_size is not None and name in self.id_features:
                lo, hi = 0, vocab_size
            if name in value_ranges:
                lo, hi = max(lo, value_ranges[name][0]), min(hi, value_ranges[name][1])
            self.ranges[name] = (lo, hi)

    def check(self, path: Path, batch: list[tuple[int, int, bytes]]) -> None:
        """``batch``: (record index, byte offset, payload); raise DataError for the first problem."""
        bodies, owners = [], []  # int list bodies, and (batch position, feature name) of each
        for pos, (index, offset, payload) in enumerate(batch):
            scan = _scan_canonical(payload)
            if scan is None:
                self._check_slow(path, index, offset, payload)
                continue
            for name, (dtype, length) in self.schema.items():
                problem = None
                if name not in scan:
                    problem = f"feature {name!r} is missing (the record has: {', '.join(sorted(scan)) or 'nothing'})"
                else:
                    kind, s, e = scan[name]
                    if (dtype.kind in "SOV") != (kind == _BYTES) or kind == _BYTES:
                        self._check_slow(path, index, offset, payload)  # rare: the reference path
                        break
                    if kind in (_INT32, _INT64):
                        bodies.append(payload[s:e])
                        owners.append((pos, name))
                        continue
                    width = _KIND_DTYPE[kind].itemsize
                    if (e - s) % width or (e - s) // width != length:
                        problem = (f"feature {name!r} has {(e - s) / width:g} values, expected {length}")
                    elif name in self.value_ranges:
                        self._check_slow(path, index, offset, payload)
                        break
                if problem:
                    raise DataError(f"{path}: record {index} at byte offset {offset}: {problem}")
        if bodies:
            self._check_ints(path, batch, bodies, owners)

    def _check_slow(self, path, index, offset, payload) -> None:
        where = f"{path}: record {index} at byte offset {offset}"
        try:
            record = decode_record(payload)
        except DataError as exc:
            raise DataError(f"{where}: payload does not parse as an OFRecord ({exc}); "
                            "garbage bytes or not an OFRecord file") from None
        problem = _check_features(record, self.schema, self.vocab_size, tuple(self.id_features),
                                  self.value_ranges)
        if problem:
            raise DataError(f"{where}: {problem}")

    def _check_ints(self, path, batch, bodies, owners) -> None:
        sizes = np.fromiter((len(b) for b in bodies), np.int64, count=len(bodies))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        joined = np.frombuffer(b"".join(bodies), np.uint8)
        last = joined < 0x80
        nonempty = sizes > 0
        counts = np.zeros(len(bodies), np.int64)
        if joined.size:
            counts[nonempty] = np.add.reduceat(last.astype(np.int64), starts[nonempty])
            broken = np.flatnonzero(nonempty & ~last[np.maximum(starts + sizes - 1, 0)])
            if broken.size:  # a list ending inside a varint: let the reference parser describe it
                pos = owners[int(broken[0])][0]
                self._check_slow(path, *batch[pos])
                raise DataError(f"{path}: record {batch[pos][0]} at byte offset {batch[pos][1]}: "
                                "an integer list ends in the middle of a varint")
        expected = np.fromiter((self.schema[name][1] for _, name in owners), np.int64, count=len(owners))
        wrong = np.flatnonzero(counts != expected)
        if wrong.size:
            i = int(wrong[0])
            (pos, name), (index, offset, _) = owners[i], batch[owners[i][0]]
            raise DataError(f"{path}: record {index} at byte offset {offset}: feature {name!r} has "
                            f"{counts[i]} values, expected {expected[i]}")
        if not joined.size:
            return
        values = _decode_varints(joined).view(np.int64)
        if any(self.schema[name][0].itemsize == 4 for _, name in owners):
            values = values.astype(np.int32).astype(np.int64)  # what an int32 list holds: the low 32 bits
        lo = np.array([self.ranges[name][0] for _, name in owners], np.float64)
        hi = np.array([self.ranges[name][1] for _, name in owners], np.float64)
        owner_of_value = np.repeat(np.arange(len(owners)), counts)
        bad = np.flatnonzero((values < lo[owner_of_value]) | (values >= hi[owner_of_value]))
        if bad.size:
            v = int(bad[0])
            i = int(owner_of_value[v])
            first = int(np.concatenate(([0], np.cumsum(counts)))[i])
            (pos, name), (index, offset, _) = owners[i], batch[owners[i][0]]
            value, at = int(values[v]), v - first
            if name in self.id_features and self.vocab_size is not None and not 0 <= value < self.vocab_size:
                msg = (f"feature {name!r} holds token id {value} at position {at}, outside the vocabulary "
                       f"[0, {self.vocab_size}) (data made with another vocab.txt?)")
            else:
                low, high = self.ranges[name]
                msg = f"feature {name!r} holds {value} at position {at}, outside [{low}, {high})"
            raise DataError(f"{path}: record {index} at byte offset {offset}: {msg}")


def _progress_bar(show: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not show)


def validate_data_dir(data_dir: str | os.PathLike, schema: Mapping[str, tuple], data_part_num: int,
                      num_ranks: int = 1, vocab_size: int | None = None,
                      id_features: Sequence[str] = ("input_ids",), prefix: str = "part-",
                      suffix_length: int | None = None,
                      max_records_per_part: int | None = None,
                      value_ranges: Mapping[str, tuple[float, float]] | None = None,
                      decode_parts: Iterable[int] | None = None,
                      progress: bool = False) -> ValidationSummary:
    """Check a data directory before OneFlow's reader sees it; raise :class:`DataError` on problems.

    Checked: the directory and all ``data_part_num`` part files exist; ``data_part_num >= num_ranks``
    (each rank needs its own parts); no part is empty; the length framing of every record is
    consistent with the file size; every payload parses as an OFRecord; every schema feature is
    present with the right kind and element count; ``id_features`` hold ids in ``[0, vocab_size)``.
    ``value_ranges`` maps more features to ``[low, high)`` bounds for their values (labels,
    positions: out-of-range values give silently wrong losses in OneFlow, not errors).
    The error names the file, the record index and its byte offset.

    The framing of every record of every part is always checked (it also counts the records).
    ``decode_parts`` (part indices; None = all) and ``max_records_per_part`` (None = all) limit the
    full decode, e.g. to the parts one rank reads. ``progress``: a progress bar over the bytes.
    """
    data_dir = Path(data_dir)
    schema = schema if isinstance(schema, Schema) else Schema(schema)
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data directory {data_dir} {what}")
    if data_part_num < 1:
        raise DataError(f"data_part_num must be >= 1 (got {data_part_num})")
    if num_ranks > data_part_num:
        raise DataError(
            f"{data_dir}: data_part_num={data_part_num} but {num_ranks} ranks read it: every rank needs "
            f"at least one part of its own (OneFlow's reader fails with fewer parts than ranks). "
            f"Re-make the data with --data_part_num >= {num_ranks}, a multiple of {num_ranks} ideally")
    paths = part_paths(data_dir, data_part_num, prefix, suffix_length)
    for p in paths:
        if not p.is_file():
            present = sorted(q.name for q in data_dir.iterdir() if q.name.startswith(prefix))
            hint = f"; the directory has {len(present)} such files: {', '.join(present[:5])}" + \
                   (" ..." if len(present) > 5 else "") if present else f"; it has no {prefix}* files"
            if present and any(len(n) - len(prefix) > 1 and n[len(prefix)] == "0" for n in present):
                hint += " (zero-padded names: pass the suffix length, e.g. 5 for part-00000)"
            raise DataError(f"missing part file {p} (data_part_num={data_part_num} expects "
                            f"{paths[0].name} .. {paths[-1].name}){hint}")
    value_ranges = dict(value_ranges or {})
    checker = _BatchChecker(schema, vocab_size, id_features, value_ranges)
    decode = set(range(data_part_num) if decode_parts is None else decode_parts)
    counts, total_bytes = [], 0
    bar = _progress_bar(progress, sum(p.stat().st_size for p in paths), f"checking {data_dir.name}")
    for part, p in enumerate(paths):
        limit = (max_records_per_part if max_records_per_part is not None else float("inf")) \
            if part in decode else 0
        size = p.stat().st_size
        total_bytes += size
        if size == 0:
            raise DataError(f"{p}: the file is empty (OneFlow's reader aborts on empty parts)")
        n = 0
        batch: list[tuple[int, int, bytes]] = []
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            offset = 0
            while offset < size:
                length = _check_frame(p, mm, size, offset, n)
                if n < limit:
                    batch.append((n, offset, mm[offset + 8:offset + 8 + length]))
                    if len(batch) >= 2048:
                        checker.check(p, batch)
                        batch = []
                offset += 8 + length
                n += 1
                if n % 4096 == 0:  # bytes of the parts before this one, plus this one's so far
                    bar.update(total_bytes - size + offset - bar.n)
        if batch:
            checker.check(p, batch)
        counts.append(n)
        bar.update(total_bytes - bar.n)
    bar.close()
    per_rank = [sum(counts[i] for i in r) for r in rank_part_ranges(data_part_num, num_ranks)]
    return ValidationSummary(data_dir, paths, counts, total_bytes, num_ranks, per_rank)
