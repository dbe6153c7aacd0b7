"""The Thrift compact encoder and reader agree (thrift_compact.py: Parquet headers and footers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_compression.weightfile import thrift_compact as tc

INT32 = st.integers(-(2**31), 2**31 - 1)


@given(
    ids=st.lists(st.integers(1, 40), min_size=1, max_size=8, unique=True).map(sorted),
    values=st.lists(INT32, min_size=8, max_size=8),
    blob=st.binary(max_size=40),
    items=st.lists(INT32, max_size=20),
    flag=st.booleans(),
)
def test_reader_reads_what_the_encoder_writes(ids, values, blob, items, flag):
    inner = tc.encode_struct((1, tc.I64, values[0]), (2, tc.BINARY, blob))
    fields = [(fid, tc.I32, value) for fid, value in zip(ids, values, strict=False)]
    last = ids[-1]
    fields += [
        (last + 1, tc.BINARY, blob),
        (last + 2, tc.LIST, (tc.I32, items)),
        (last + 3, tc.STRUCT, inner),
        (last + 20, tc.BOOL, flag),  # a field-id jump of more than 15
    ]
    encoded = tc.encode_struct(*fields) + b"tail"
    reader = tc.Reader(memoryview(encoded))
    seen = []
    for fid, kind in reader.fields():
        if kind == tc.I32:
            seen.append((fid, reader.zigzag()))
        else:
            seen.append((fid, kind))
            reader.skip(kind)
    assert seen[: len(ids)] == list(zip(ids, values, strict=False))
    assert seen[len(ids) :] == [
        (last + 1, tc.BINARY),
        (last + 2, tc.LIST),
        (last + 3, tc.STRUCT),
        (last + 20, tc.TRUE if flag else tc.FALSE),
    ]
    assert encoded[reader.pos :] == b"tail"  # the reader stops exactly at the struct's end


@pytest.mark.parametrize("data", [b"", b"\x15", b"\x19\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
def test_truncated_or_malformed_bytes_raise_malformed(data):
    reader = tc.Reader(memoryview(data))
    with pytest.raises(tc.Malformed):
        for _, kind in reader.fields():
            reader.skip(kind)


@given(
    values=st.lists(INT32, min_size=3, max_size=3),
    big=st.integers(-(2**63), 2**63 - 1),
    blob=st.binary(max_size=40),
    items=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
    flags=st.tuples(st.booleans(), st.booleans()),
    real=st.floats(allow_nan=False),
)
def test_a_decoded_struct_encodes_back_to_the_same_bytes(values, big, blob, items, flags, real):
    inner = tc.encode_struct((1, tc.I64, big), (2, tc.BINARY, blob), (3, tc.BOOL, flags[0]))
    encoded = tc.encode_struct(
        (1, tc.I32, values[0]), (2, tc.I16, values[1] % 2**15), (3, tc.I8, values[2] % 256),
        (4, tc.LIST, (tc.I64, items)), (5, tc.LIST, (tc.STRUCT, [inner] * len(items))),
        (6, tc.DOUBLE, real), (7, tc.BOOL, flags[1]), (40, tc.STRUCT, inner),
    )  # fmt: skip
    decoded = tc.Reader(memoryview(encoded)).struct()
    assert decoded.encode() == encoded
    assert decoded[40][1][1] == (tc.I64, big) and decoded[7] == (tc.BOOL, flags[1])
    assert decoded[4][1] == (tc.I64, items) and decoded[6][1] == real
    decoded[1] = (tc.I32, values[0] + 1)  # what the Parquet footer rewrite relies on
    assert tc.Reader(memoryview(decoded.encode())).struct()[1][1] == values[0] + 1


def test_a_pa_buffer_reads_as_unsigned_bytes():
    import pyarrow as pa

    encoded = tc.encode_struct((9, tc.STRUCT, tc.encode_struct((1, tc.I32, 5))))  # header 0x9c
    assert tc.Reader(memoryview(pa.py_buffer(encoded))).struct().encode() == encoded
