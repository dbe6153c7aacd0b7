"""Provider pieces that need no model: similarity math, batching, on_error, progress, inputs."""

from __future__ import annotations

import numpy as np
import pytest

from llm_compression.errors import InputError, ModelFileNotFoundError
from llm_compression.provider import (
    EmbeddingResult,
    cosine_matrix,
    embed_in_batches,
    l2_normalize,
    softmax,
    top_k,
)
from llm_compression.provider.inputs import as_items, as_texts, check_waveform


def test_cosine_matrix_matches_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    expected = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
    got = cosine_matrix(a, b)
    assert got.shape == (3, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cosine_matrix_rejects_mismatched_dims_and_nan():
    with pytest.raises(InputError, match="dimensions differ"):
        cosine_matrix(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match="NaN"):
        cosine_matrix(np.array([[np.nan, 1.0]]), np.ones((1, 2)))


def test_l2_normalize_unit_rows_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_softmax_sums_to_one_and_is_stable():
    p = softmax(np.array([1000.0, 1001.0, 999.0]))
    assert np.isfinite(p).all()
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    assert p.argmax() == 1


def test_top_k_order_clipping_and_ties():
    scores = np.array([0.1, 0.9, 0.5, 0.9])
    assert top_k(scores, 2) == [(1, pytest.approx(0.9)), (3, pytest.approx(0.9))]
    assert [i for i, _ in top_k(scores, 10)] == [1, 3, 2, 0]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="top_k"):
            top_k(scores, bad)


def _fake_embed(calls):
    def embed(chunk):
        calls.append(len(chunk))
        return np.array([[float(x), 1.0] for x in chunk], np.float32)

    return embed


def test_batching_uses_batch_size_and_keeps_order():
    calls = []
    res = embed_in_batches(
        list(range(10)), prepare=lambda x: x, embed=_fake_embed(calls), dim=2, batch_size=4
    )
    assert calls == [4, 4, 2]
    assert res.indices == tuple(range(10))
    np.testing.assert_array_equal(res.vectors[:, 0], np.arange(10))


def _prepare_rejecting(bad):
    def prepare(x):
        if x in bad:
            raise InputError(f"item {x} is bad")
        return x

    return prepare


def test_on_error_skip_reports_bad_items_and_embeds_the_rest(caplog):
    calls = []
    res = embed_in_batches(
        list(range(7)), prepare=_prepare_rejecting({2, 5}), embed=_fake_embed(calls), dim=2,
        batch_size=3, on_error="skip",
    )  # fmt: skip
    assert isinstance(res, EmbeddingResult)
    assert res.indices == (0, 1, 3, 4, 6)
    assert [i for i, _ in res.errors] == [2, 5]
    assert "item 5 is bad" in res.errors[1][1]
    np.testing.assert_array_equal(res.vectors[:, 0], [0, 1, 3, 4, 6])
    assert not res.ok and len(res) == 5
    assert "skipped 2 of 7" in caplog.text


def test_on_error_raise_names_the_position():
    with pytest.raises(InputError, match="input 5: item 5 is bad"):
        embed_in_batches(
            list(range(7)), prepare=_prepare_rejecting({5}), embed=_fake_embed([]), dim=2,
        )  # fmt: skip


def test_non_library_errors_are_not_swallowed_by_skip():
    def prepare(x):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        embed_in_batches([1], prepare=prepare, embed=_fake_embed([]), dim=2, on_error="skip")


def test_all_skipped_gives_empty_matrix():
    res = embed_in_batches(
        [1, 2], prepare=_prepare_rejecting({1, 2}), embed=_fake_embed([]), dim=3, on_error="skip"
    )
    assert res.vectors.shape == (0, 3) and res.indices == ()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2.0}, {"on_error": "ignore"}])
def test_bad_options(kwargs):
    with pytest.raises(InputError):
        embed_in_batches([1], prepare=lambda x: x, embed=_fake_embed([]), dim=2, **kwargs)


def test_progress_bar_writes_to_stderr_only_when_asked(capsys):
    items = list(range(5))
    embed_in_batches(items, prepare=lambda x: x, embed=_fake_embed([]), dim=2, batch_size=2)
    assert capsys.readouterr().err == ""
    embed_in_batches(
        items, prepare=lambda x: x, embed=_fake_embed([]), dim=2, batch_size=2,
        show_progress=True, desc="testing",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "testing" in captured.err and "5/5" in captured.err
    assert captured.out == ""


def test_as_texts_and_as_items():
    assert as_texts("a") == ["a"]
    assert as_texts(("a", "b")) == ["a", "b"]
    with pytest.raises(InputError, match=r"texts\[1\]"):
        as_texts(["a", 3])
    with pytest.raises(InputError):
        as_texts(5)
    assert len(as_items(np.zeros((2, 4, 4, 3), np.uint8))) == 2
    assert len(as_items(np.zeros((4, 4, 3), np.uint8))) == 1
    assert as_items(["x", "y"]) == ["x", "y"]


def test_waveform_checks():
    assert check_waveform(np.zeros(10, np.float32)).dtype == np.float32
    with pytest.raises(InputError, match="empty"):
        check_waveform(np.zeros(0, np.float32))
    with pytest.raises(InputError, match="NaN or infinite"):
        check_waveform(np.array([0.0, np.inf], np.float32))
    with pytest.raises(InputError, match="dtype int16"):
        check_waveform(np.zeros(4, np.int16))


def test_missing_model_file_is_typed(tmp_path):
    from llm_compression.provider import MultimodalEmbeddingProvider

    with pytest.raises(ModelFileNotFoundError, match="clip_model: weight file not found"):
        MultimodalEmbeddingProvider(clip_model=tmp_path / "nope.parquet")


def test_length_sorts_the_whole_call_and_restores_input_order():
    calls = []

    def embed(chunk):
        calls.append(list(chunk))
        return np.array([[float(x), 1.0] for x in chunk], np.float32)

    items = [3, 9, 1, 7, 5, 8, 2]
    res = embed_in_batches(
        items, prepare=lambda x: x, embed=embed, dim=2, batch_size=3, length=lambda x: x
    )
    assert calls == [[9, 8, 7], [5, 3, 2], [1]]  # longest first, across the whole call
    assert res.indices == tuple(range(7))
    np.testing.assert_array_equal(res.vectors[:, 0], items)  # back in input order


def test_length_mode_skips_bad_items_and_counts_them_in_the_bar(capsys):
    res = embed_in_batches(
        list(range(6)), prepare=_prepare_rejecting({1, 4}), embed=_fake_embed([]), dim=2,
        batch_size=2, on_error="skip", length=lambda x: x, show_progress=True,
    )  # fmt: skip
    assert res.indices == (0, 2, 3, 5) and [i for i, _ in res.errors] == [1, 4]
    assert "6/6" in capsys.readouterr().err


def test_normalize_is_applied_once_to_the_result():
    res = embed_in_batches(
        [3, 4], prepare=lambda x: x, embed=lambda c: np.array([[x, 4.0] for x in c]), dim=2,
        normalize=True,
    )  # fmt: skip
    np.testing.assert_allclose(res.vectors, [[0.6, 0.8], [4 / 32**0.5, 4 / 32**0.5]], atol=1e-7)
