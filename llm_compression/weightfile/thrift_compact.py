"""Thrift's compact protocol, just what Parquet page headers and footers need.

thrift/doc/specs/thrift-compact-protocol.md. ``Reader`` reads structs field by field and skips
what its caller does not need (pages.py finds a tensor's zstd frame with it); ``encode_struct``
writes them (the tests craft page headers with it).
"""

from __future__ import annotations

import struct

# Type ids. In a field header a bool's value is the type nibble itself: TRUE (1) or FALSE (2).
STOP, TRUE, FALSE, I8, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
BOOL = TRUE  # what callers pass as the type of a bool field; encode_struct picks TRUE or FALSE


class Malformed(ValueError):
    """The bytes are not the compact-protocol struct the caller expects."""


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_value(kind: int, value) -> bytes:
    if kind in (I16, I32, I64):
        return uvarint((value << 1) ^ (value >> 63))  # zigzag
    if kind == BINARY:
        data = value.encode() if isinstance(value, str) else bytes(value)
        return uvarint(len(data)) + data
    if kind == LIST:
        element, items = value
        size = (
            bytes([len(items) << 4 | element])
            if len(items) < 15
            else bytes([0xF0 | element]) + uvarint(len(items))
        )
        return size + b"".join(encode_value(element, item) for item in items)
    if kind == STRUCT:
        return value.encode() if isinstance(value, Struct) else value  # bytes: encoded already
    if kind == I8:
        return bytes([value & 0xFF])
    if kind == DOUBLE:
        return struct.pack("<d", value)
    return b""  # BOOL: the value is in the field header


def encode_struct(*fields: tuple[int, int, object]) -> bytes:
    """A thrift struct from ``(field id, type, value)``; fields whose value is None are absent."""
    out, last = bytearray(), 0
    for fid, kind, value in fields:
        if value is None:
            continue
        nibble = (TRUE if value else FALSE) if kind == BOOL else kind
        delta = fid - last
        out += (
            bytes([delta << 4 | nibble]) if 0 < delta <= 15 else bytes([nibble]) + uvarint(fid << 1)
        )
        out += encode_value(kind, value)
        last = fid
    out.append(0)
    return bytes(out)


class Reader:
    """Reads a struct field by field from ``buf``; ``skip`` passes over what the caller does not need."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = memoryview(buf).cast("B"), 0  # unsigned bytes (pa.Buffer's are "b")

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise Malformed("the struct runs past the end of its bytes")
        self.pos += 1
        return self.buf[self.pos - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise Malformed("varint longer than 64 bits")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def fields(self):
        """(field id, type) of each field of the struct at the cursor, until its STOP."""
        last = 0
        while (head := self.byte()) != STOP:
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self.zigzag()
            yield last, kind

    def skip(self, kind: int) -> None:
        if kind in (TRUE, FALSE):
            return
        if kind == I8:
            self.byte()
        elif kind in (I16, I32, I64):
            self.varint()
        elif kind == DOUBLE:
            self.pos += 8
        elif kind == BINARY:
            length = self.varint()  # read first: `self.pos += self.varint()` would drop its advance
            self.pos += length
        elif kind in (LIST, SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif kind == STRUCT:
            for _, inner in self.fields():
                self.skip(inner)
        else:  # maps never occur in Parquet headers
            raise Malformed(f"unexpected thrift type {kind}")

    def value(self, kind: int):
        """The value at the cursor as ``encode_value`` takes it back; a struct is a ``Struct``."""
        if kind in (TRUE, FALSE):
            return kind == TRUE
        if kind == I8:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == BINARY:
            length = self.varint()
            self.pos += length
            if self.pos > len(self.buf):
                raise Malformed("a binary field runs past the end of its bytes")
            return bytes(self.buf[self.pos - length : self.pos])
        if kind == DOUBLE:
            self.pos += 8
            if self.pos > len(self.buf):
                raise Malformed("a double runs past the end of its bytes")
            return struct.unpack("<d", self.buf[self.pos - 8 : self.pos])[0]
        if kind in (LIST, SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            element = head & 0x0F
            if element in (TRUE, FALSE):
                raise Malformed("lists of bools never occur in Parquet metadata")
            return element, [self.value(element) for _ in range(size)]
        if kind == STRUCT:
            return self.struct()
        raise Malformed(f"unexpected thrift type {kind}")

    def struct(self) -> Struct:
        """The whole struct at the cursor, every field kept (to change some and encode it again)."""
        out = Struct()
        for fid, kind in self.fields():
            out[fid] = (BOOL if kind in (TRUE, FALSE) else kind, self.value(kind))
        return out


class Struct(dict):
    """A decoded struct: field id -> (type, value); ``encode()`` writes it back, fields in id order."""

    def encode(self) -> bytes:
        return encode_struct(*((fid, kind, value) for fid, (kind, value) in sorted(self.items())))
