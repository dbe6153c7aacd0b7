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
