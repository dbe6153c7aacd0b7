"""core.decoder_graph: a quantized causal LM's whole decoder as one ONNX Runtime graph, checked
against the per-matrix path (``load_quantized(..., graph=False)``) on the same weights. int8 /
int4 ask for the graph (``kernel="onnxruntime"``): by default our C decoder runs them."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import tiny_causal_lm

from llm_compression.errors import InputError
from llm_compression.weightfile import write_model

pytest.importorskip("onnxruntime")
from llm_compression.core.decoder_graph import unsupported  # noqa: E402
from llm_compression.families.quantized import load_quantized  # noqa: E402

PROMPTS = [[5, 17, 33, 8, 61, 9], [3, 4], [7, 8, 9, 10]]


@pytest.fixture(scope="module", params=[("llama", True), ("olmo2", False)], ids=str)
def stored(request, tmp_path_factory):
    _, cfg, state = tiny_causal_lm(request.param[0], tie=request.param[1], heads=2)
    path = tmp_path_factory.mktemp("g") / "m.parquet"
    return write_model(path, {k: v.numpy() for k, v in state.items()}, config=cfg,
                       dtype="float32")  # fmt: skip


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-4) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= rel * want.abs().max()


def _steps(model, ids: list[int], n: int) -> list[torch.Tensor]:
    """Last-position logits of the prompt and of ``n`` greedy steps after it (cached)."""
    cache = model.new_cache(1, len(ids) + n)
    x, pos, out = torch.tensor([ids]), 0, []
    with torch.inference_mode():
        for _ in range(n + 1):
            logits = model.logits(x, cache=cache, start_pos=pos, last_only=True)[:, -1]
            out.append(logits)
            pos += x.shape[1]
            x = logits.argmax(-1, keepdim=True)
    return out


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_graph_logits_equal_the_per_matrix_path(stored, dtype: str) -> None:
    graph, old = (
        load_quantized(stored, dtype, kernel="onnxruntime"),
        load_quantized(stored, dtype, graph=False),
    )
    assert graph.decoder_graph is not None and old.decoder_graph is None
    for got, want in zip(_steps(graph, PROMPTS[0], 6), _steps(old, PROMPTS[0], 6), strict=True):
        _close(got, want)
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    with torch.inference_mode():
        _close(graph.logits(ids), old.logits(ids))  # every position, two rows


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_graph_greedy_tokens_equal_the_per_matrix_path(stored, dtype: str) -> None:
    graph, old = (
        load_quantized(stored, dtype, kernel="onnxruntime"),
        load_quantized(stored, dtype, graph=False),
    )
    for ids in PROMPTS:
        assert graph.generate_ids(ids, max_new_tokens=12) == old.generate_ids(
            ids, max_new_tokens=12
        )


def test_graph_rows_of_different_lengths_decode_as_alone(stored) -> None:
    model = load_quantized(stored, "int4", kernel="onnxruntime")
    alone = [model.generate_ids(p, max_new_tokens=12) for p in PROMPTS]
    assert model.generate_ids(PROMPTS, max_new_tokens=12) == alone
    assert all(len(a) > 0 for a in alone)


def test_graph_prefix_then_continuation_equals_one_pass(stored) -> None:
    """A second chunk of several tokens after a cached prefix (align.report's use)."""
    model = load_quantized(stored, "int8", kernel="onnxruntime")
    ids = PROMPTS[0]
    cache = model.new_cache(1, len(ids))
    with torch.inference_mode():
        model.logits(torch.tensor([ids[:2]]), cache=cache)
        rest = model.logits(torch.tensor([ids[2:]]), cache=cache, start_pos=2)
        whole = model.logits(torch.tensor([ids]))
    _close(rest, whole[:, 2:])


def test_graph_refuses_a_full_cache_and_a_mask(stored) -> None:
    model = load_quantized(stored, "int8", kernel="onnxruntime")
    cache = model.new_cache(1, 4)
    with torch.inference_mode(), pytest.raises(InputError, match="holds 4 positions"):
        model.logits(torch.tensor([PROMPTS[0]]), cache=cache)
    with pytest.raises(InputError, match="context is 128"):
        model.generate_ids([5] * 128, max_new_tokens=2)  # no room in the context
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.inference_mode(), pytest.raises(InputError, match="equal length"):
        model.logits(torch.tensor([PROMPTS[0]]), mask=mask)


def test_models_the_graph_cannot_run_keep_the_per_matrix_path(tmp_path) -> None:
    _, cfg, state = tiny_causal_lm("olmo", heads=2)  # OLMo-1: non-parametric norms, clip_qkv
    assert "clip_qkv" in unsupported(cfg.body)
    _, llama, _ = tiny_causal_lm("llama")  # head_dim 8
    assert "multiple of 16" in unsupported(llama.body)
    path = write_model(tmp_path / "o.parquet", {k: v.numpy() for k, v in state.items()},
                       config=cfg, dtype="float32")  # fmt: skip
    model = load_quantized(path, "int8", kernel="onnxruntime")
    assert model.decoder_graph is None
    assert len(model.generate_ids([5, 6, 7], max_new_tokens=3)) <= 3


def test_threads_sharing_one_model_each_get_their_tokens(stored) -> None:
    """Concurrent generation on one model: every thread gets its prompt's tokens alone (each
    thread keeps its own IO binding, its cache buffers bound between steps)."""
    import threading

    model = load_quantized(stored, "int8", kernel="onnxruntime")
    alone = [model.generate_ids(p, max_new_tokens=10) for p in PROMPTS]
    got: dict[int, list] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got.setdefault(i, []).append(model.generate_ids(PROMPTS[i], max_new_tokens=10))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == [alone[i]] * 3 for i in range(len(PROMPTS)))


def test_graph_prefills_a_right_padded_batch_as_each_prompt_alone(stored) -> None:
    """One run over the prompts right-padded (each row's own length in ``seqlens_k``): each
    row's logits and cached keys / values equal those of its prompt alone."""
    model = load_quantized(stored, "int8", kernel="onnxruntime")
    lengths = [len(p) for p in PROMPTS]
    ids = torch.zeros(len(PROMPTS), max(lengths), dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)] = torch.tensor(p)
    cache = model.new_cache(len(PROMPTS), max(lengths) + 1)
    pairs = [(layer.k, layer.v) for layer in cache]
    with torch.inference_mode():
        embeds = model.token_embed(ids)
        got = model.decoder_graph.run(embeds, pairs, [0] * 3, last_only=True, lengths=lengths)
        for i, p in enumerate(PROMPTS):
            own = model.new_cache(1, len(p))
            _close(got[i], model.logits(torch.tensor([p]), cache=own, last_only=True)[0])
            _close(cache[0].k[i, :, : len(p)], own[0].k[0])
            _close(cache[-1].v[i, :, : len(p)], own[-1].v[0])


def test_graph_batch_prefill_is_one_run(stored, monkeypatch) -> None:
    """generate_ids over a batch: one graph run for all prompts, then one a step."""
    from llm_compression.core.decoder_graph import DecoderGraph

    model = load_quantized(stored, "int4", kernel="onnxruntime")
    calls = []
    real = DecoderGraph.run
    monkeypatch.setattr(DecoderGraph, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = model.generate_ids(PROMPTS, max_new_tokens=5)
    assert len(calls) <= 5 and max(map(len, out)) == len(calls)


def test_graph_pads_only_a_first_prompt(stored) -> None:
    model = load_quantized(stored, "int8", kernel="onnxruntime")
    cache = model.new_cache(2, 8)
    pairs = [(layer.k, layer.v) for layer in cache]
    embeds = model.token_embed(torch.tensor([[5, 6, 7], [5, 6, 7]]))
    with torch.inference_mode(), pytest.raises(InputError, match="must be a first prompt"):
        model.decoder_graph.run(embeds, pairs, [2, 2], last_only=True, lengths=[3, 2])


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_graph_fuses_residual_adds_with_norms(stored, dtype: str, monkeypatch) -> None:
    """Llama (pre norms): every residual add fused with the next norm, GroupQueryAttention fed
    the packed qkv (no Split for it), no Shape / Reshape pair around an int4 matrix's offsets
    correction. OLMo-2 (sandwich post norms, q/k norms) keeps its Adds, norms and qkv Split."""
    from collections import Counter

    from llm_compression.core import decoder_graph

    graphs = []
    real = decoder_graph.serialized
    monkeypatch.setattr(decoder_graph, "serialized", lambda g: graphs.append(g) or real(g))
    model = load_quantized(stored, dtype, kernel="onnxruntime")
    ops, layers = Counter(n.op_type for n in graphs[0].node), model.config.body.n_layers
    assert ops["Shape"] == 0 and ops["Split"] == layers * (2 if model.config.body.qk_norm else 1)
    if model.config.body.norm_placement == "pre":
        assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers
        assert ops["SimplifiedLayerNormalization"] == 1 and ops["Add"] == ops["MatMul"]
    else:
        assert ops["SkipSimplifiedLayerNormalization"] == 0
        assert ops["Add"] == 2 * layers + ops["MatMul"]


def _torch_model(path):
    from llm_compression.families import build_model
    from llm_compression.loader import WeightLoader, load_weights_into

    loader = WeightLoader(path)
    model = build_model(loader.config)
    load_weights_into(model, loader.load_weights())
    return model.eval()


def test_float32_graph_equals_the_torch_model(stored) -> None:
    """dtype float32 (``load_model(path, backend="onnxruntime")``): float32 matrices on the graph
    (FusedMatMul) give the torch model's logits at every step and its greedy tokens, alone and
    batched."""
    graph, torch_model = load_quantized(stored, "float32"), _torch_model(stored)
    assert graph.decoder_graph is not None and torch_model.decoder_graph is None
    assert not any(isinstance(m, torch.nn.Linear) for m in graph.modules())  # all in the graph
    for got, want in zip(_steps(graph, PROMPTS[0], 6), _steps(torch_model, PROMPTS[0], 6),
                         strict=True):  # fmt: skip
        _close(got, want, rel=1e-5)
    alone = [torch_model.generate_ids(p, max_new_tokens=12) for p in PROMPTS]
    assert graph.generate_ids(PROMPTS, max_new_tokens=12) == alone


def test_float32_graph_refuses_what_it_cannot_run(stored, tmp_path) -> None:
    from llm_compression.errors import ConfigError
    from llm_compression.loader import load_model

    with pytest.raises(ConfigError, match="float32, int8 or int4"):
        load_model(stored, backend="onnxruntime", dtype="bfloat16")
    with pytest.raises(ConfigError, match="graph=True"):
        load_quantized(stored, "float32", graph=False)
    model = load_quantized(stored, "float32")
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.inference_mode(), pytest.raises(InputError, match="backend='torch'"):
        model.logits(torch.tensor([PROMPTS[0]]), mask=mask)
    with torch.inference_mode(), pytest.raises(InputError, match="holds 4 positions"):
        model.logits(torch.tensor([PROMPTS[0]]), cache=model.new_cache(1, 4))
    _, cfg, state = tiny_causal_lm("olmo", heads=2)  # OLMo-1: a norm the graph does not run
    path = write_model(tmp_path / "o.parquet", {k: v.numpy() for k, v in state.items()},
                       config=cfg, dtype="float32")  # fmt: skip
    with pytest.raises(ConfigError, match="backend='torch'"):
        load_model(path, backend="onnxruntime")
