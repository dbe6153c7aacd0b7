"""core.compute: the one dtype= parser and the bfloat16 / int8 compute modes on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from provider_helpers import as_built, tiny_bert_file, tiny_clip_folder

from llm_compression.convert import convert
from llm_compression.core.compute import apply_compute, parse_dtype
from llm_compression.core.compute_layers import BFloat16Linear, Int8Linear
from llm_compression.errors import InputError
from llm_compression.loader import load_model
from llm_compression.provider import CLIPEngine, MultimodalEmbeddingProvider


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        (None, "float32"), ("float32", "float32"), (torch.float32, "float32"),
        ("bfloat16", "bfloat16"), ("BF16", "bfloat16"), (torch.bfloat16, "bfloat16"),
        ("int8", "int8"), (torch.int8, "int8"), (torch.qint8, "int8"), ("torch.int8", "int8"),
        ("float16", "float16"), (torch.float16, "float16"),
    ],
)  # fmt: skip
def test_parse_dtype(given, mode):
    assert parse_dtype(given) == mode


@pytest.mark.parametrize("bad", ["int4x", "float64", torch.float64, 8, ""])
def test_parse_dtype_refuses_with_the_choices(bad):
    with pytest.raises(InputError, match="'float32', 'bfloat16', 'int8'"):
        parse_dtype(bad)


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    return tiny_bert_file(tmp_path_factory)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    folder = tiny_clip_folder(tmp_path_factory.mktemp("clip"))
    return convert(folder, tmp_path_factory.mktemp("out") / "clip.parquet", dtype="float32")


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture
def torch_layers(monkeypatch):
    """int8 BERT on torch's int8 layers: the C kernel (decision 0016) turned down, as where the
    extension is not built or the CPU lacks AVX512-VNNI."""
    from llm_compression.core import native_encoder

    monkeypatch.setattr(native_encoder, "why_not", lambda cfg: "turned down for the test")


@pytest.mark.parametrize(("mode", "layer"), [("bfloat16", BFloat16Linear), ("int8", Int8Linear)])
def test_modes_convert_every_linear_and_stay_close(bert_file, mode, layer, torch_layers):
    ref, model = load_model(bert_file), load_model(bert_file, dtype=mode)
    assert model.compute_dtype == mode
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, layer) for m in model.modules()) == 2 * 4  # qkv o up down x 2
    ids = torch.randint(1000, 20000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = ref.encode(ids).float().numpy(), model.encode(ids).float().numpy()
    assert _cos(a, b).min() > 0.98


def test_int8_weights_stay_int8(bert_file, torch_layers):
    model = load_model(bert_file, dtype="int8")
    q = model.layers[0].mlp.up
    weight, _ = torch.ops.quantized.linear_unpack(q._packed)
    assert weight.dtype == torch.qint8 and weight.q_per_channel_scales().shape == (64,)
    assert not weight.q_per_channel_zero_points().any()  # symmetric, per output channel
    assert not any(p.shape == (64, 32) for p in model.parameters())  # no float copy kept
    assert model.embed.token.values.dtype == torch.int8  # the word table too (lookups only)
    assert not any(p.shape[0] == model.config.vocab_size for p in model.parameters())


def test_float32_is_untouched(bert_file):
    a, b = load_model(bert_file), load_model(bert_file, dtype=torch.float32)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_float32_apply_is_a_no_op(bert_file):
    model = load_model(bert_file)
    before = {n: p.data_ptr() for n, p in model.state_dict().items()}
    apply_compute(model, "float32")
    assert before == {n: p.data_ptr() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_entry_points_take_dtype(bert_file, clip_file, mode):
    provider = MultimodalEmbeddingProvider(text_model=bert_file, clip_model=clip_file, dtype=mode)
    exact = MultimodalEmbeddingProvider(text_model=bert_file)
    texts = ["a cat on a sofa", "stock markets fell"]
    got = provider.encode_batch(texts)
    assert got.dtype == np.float32 and _cos(got, exact.encode_batch(texts)).min() > 0.98
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert provider.encode_image([image]).shape == (1, 24)
    assert CLIPEngine(clip_file, dtype=mode).model.compute_dtype == mode


def test_provider_checks_dtype_before_loading(bert_file):
    with pytest.raises(InputError, match="dtype must be"):
        MultimodalEmbeddingProvider(text_model=bert_file, dtype="int3")


def test_cli_embed_dtype(bert_file, capsys):
    from llm_compression.cli import main

    assert main(["embed", "--text-model", str(bert_file), "--text", "hi", "--dtype", "int8"]) == 0


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_whisper_modes_embed_and_transcribe(tmp_path, mode):
    from provider_helpers import tiny_whisper_folder

    path = convert(tiny_whisper_folder(tmp_path / "w"), tmp_path / "w.parquet", dtype="float32")
    wave = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    exact = MultimodalEmbeddingProvider(audio_model=path).encode_audio([wave], sample_rate=16000)
    fast = MultimodalEmbeddingProvider(audio_model=path, dtype=mode).encode_audio(
        [wave], sample_rate=16000
    )
    assert _cos(exact, fast).min() > 0.98
    assert isinstance(load_model(path, dtype=mode).transcribe(wave, max_new_tokens=3), str)


@pytest.fixture
def torch_decoder(monkeypatch):
    """Whisper's decoder on torch's layers, as on a CPU our kernel does not run."""
    from llm_compression.core import native_cross

    monkeypatch.setattr(native_cross, "why_not", lambda cfg: "disabled for this test")


@pytest.mark.parametrize(
    ("mode", "encoder_layer", "decoder_layer"),
    [("bfloat16", BFloat16Linear, BFloat16Linear), ("int8", BFloat16Linear, Int8Linear)],
)
def test_whisper_compute_plan_and_tied_head(
    tmp_path, mode, encoder_layer, decoder_layer, torch_decoder
):
    """Whisper's int8 decodes in int8 and encodes in bfloat16; the tied output projection follows
    the decoder's mode and gives the float32 model's logits closely (torch's layers: where our
    kernel runs the decoder, tests/unit/test_native_cross.py)."""
    from provider_helpers import tiny_whisper_folder

    path = convert(tiny_whisper_folder(tmp_path / "w"), tmp_path / "w.parquet", dtype="float32")
    exact, model = load_model(path), load_model(path, dtype=mode)
    assert {type(m) for m in model.encoder.modules()} & {BFloat16Linear, Int8Linear} == {
        encoder_layer
    }
    assert type(model.decoder.head) is decoder_layer and exact.decoder.head is None
    assert model.encoder.conv2.weight.dtype == torch.bfloat16  # the stem follows the encoder
    ids = torch.tensor([[1, 5, 9, 30]])
    memory = torch.randn(
        1, 20, exact.config.decoder.dim, generator=torch.Generator().manual_seed(1)
    )
    cache = model.decoder.new_cache(1, 8)
    with torch.inference_mode():
        want = exact.decoder(ids, memory=memory)
        got = model.decoder(ids, memory=memory, cache=cache)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert _cos(got.numpy(), want.numpy()).min() > 0.99
    # the encoder's keys and values a decode step reads: bfloat16 in both modes
    assert cache[0].cross[0].dtype == torch.bfloat16
    head = model.decoder.head
    if mode == "int8":
        weight = torch.ops.quantized.linear_unpack(head._packed)[0]
        assert weight.dtype == torch.qint8  # the head is int8 in memory, not a float copy
    else:
        weight = head.dense()[0]
        assert weight.dtype == torch.bfloat16
    assert weight.shape == exact.decoder.token_embed.weight.shape
    table = model.decoder.token_embed  # lookups: int8 rows, the head's values, in int8 mode
    if mode == "int8":
        assert torch.equal(table.values, weight.int_repr())
    else:
        assert table.weight.dtype == torch.float32


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
def test_patch_conv_runs_as_a_bfloat16_linear(clip_file, mode):
    """bfloat16 and int8 compute CLIP's patch convolution as a bfloat16 linear layer over the
    flattened patches: the patch embeddings equal the float32 conv's up to bfloat16 rounding."""

    model, exact = load_model(clip_file, dtype=mode), load_model(clip_file)
    assert model.vision.patch_embed is None and isinstance(
        model.vision.patch_linear, BFloat16Linear
    )
    assert exact.vision.patch_linear is None  # float32 keeps the exact conv
    size = exact.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = exact.vision.patch_embed(pixels).flatten(2).transpose(1, 2)
        got = model.vision.patch_linear(model.vision._patches(pixels.to(torch.bfloat16))).float()
    assert got.shape == want.shape
    assert float((got - want).norm() / want.norm()) < 0.005  # a wrong patch order is ~1.4


@pytest.mark.parametrize(
    ("mode", "tolerance"), [("float32", 1e-5), ("bfloat16", 0.02), ("int8", 0.02)]
)
def test_quick_gelu_runs_as_one_silu(clip_file, mode, tolerance):
    """The modes fold quick_gelu's 1.702 into the up / down weights and run one silu: the MLP
    gives the unconverted MLP's output up to the mode's rounding."""
    from llm_compression.core.mlp import MLP, quick_gelu

    model = load_model(clip_file, dtype=mode)
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    assert mlps and all(m.act is torch.nn.functional.silu for m in mlps)
    x = torch.randn(2, 7, mlps[0].up.in_features, generator=torch.Generator().manual_seed(3))
    ref_mlp = next(m for m in as_built(clip_file).modules() if isinstance(m, MLP))
    assert ref_mlp.act is quick_gelu
    with torch.inference_mode():
        want, got = ref_mlp(x), mlps[0](x).float()
    assert float((got - want).norm() / want.norm()) < tolerance


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_float32_runs_on_onednn_within_parity(bert_file):
    """float32: every linear on oneDNN's packed float32 weight (q, k, v as one), no dense copy
    kept, the output within 1e-5 of torch's own ops; gradients still reach the input."""
    from llm_compression.core.compute_layers import Float32Linear

    model, ref = load_model(bert_file), as_built(bert_file)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, Float32Linear) for m in model.modules()) == 4 * 2  # qkv o up down
    assert all(m.weight is None for m in model.modules() if isinstance(m, Float32Linear))
    ids = torch.randint(1000, 20000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = model.encode(ids), ref.encode(ids)
    assert float((got - want).norm() / want.norm()) < 1e-5
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    layer, plain = model.layers[0].mlp.up, ref.layers[0].mlp.up
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x)
    (grad_ref,) = torch.autograd.grad(plain(x).square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_float32_keeps_plain_layers_without_onednn(bert_file, monkeypatch):
    """Where oneDNN cannot pack (a GPU's weights, a torch without it) float32 keeps torch's
    linear layers, and the model computes as built."""
    from llm_compression.core import compute

    monkeypatch.setattr(compute.torch.backends.mkldnn, "is_available", lambda: False)
    model = load_model(bert_file)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 6 * 2  # q k v o up down
    ids = torch.randint(1000, 20000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model.encode(ids), as_built(bert_file).encode(ids))


def test_int8_engine_follows_the_cpu(bert_file, monkeypatch):
    """oneDNN (AMX tiles) where the CPU has AMX int8, fbgemm (VNNI) elsewhere; the layers are
    packed for that engine."""
    from llm_compression.core import compute_layers

    for flags, want in (({"avx512_vnni", "amx_int8"}, "onednn"), ({"avx512_vnni"}, "fbgemm")):
        compute_layers.int8_engine.cache_clear()
        monkeypatch.setattr(compute_layers, "_cpu_flags", lambda flags=flags: flags)
        assert compute_layers.int8_engine() == want
        model = load_model(bert_file, dtype="int8")
        assert torch.backends.quantized.engine == want
        ids = torch.randint(1000, 20000, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            assert model.encode(ids).isfinite().all()
    compute_layers.int8_engine.cache_clear()


def test_whisper_int8_decode_steps_run_fbgemm(tmp_path, monkeypatch, torch_decoder):
    """On an AMX CPU the encoder-sized int8 layers pack for oneDNN, a decoder's step layers
    (a row per beam a call) for fbgemm, the cross-attention's keys and values (the encoder
    output's 1500 rows) for oneDNN; repacking keeps the int8 values: the same logits (torch's
    layers, where our kernel does not run the decoder)."""
    from provider_helpers import tiny_whisper_folder

    from llm_compression.core import compute, compute_layers

    if not {"fbgemm", "onednn"} <= set(torch.backends.quantized.supported_engines):
        pytest.skip("this torch lacks fbgemm or oneDNN quantized engines")
    compute_layers.int8_engine.cache_clear()
    monkeypatch.setattr(compute_layers, "_cpu_flags", lambda: {"avx512_vnni", "amx_int8"})
    path = convert(tiny_whisper_folder(tmp_path / "w"), tmp_path / "w.parquet", dtype="float32")
    model = load_model(path, dtype="int8")
    engines = {n: m.engine for n, m in model.decoder.named_modules() if isinstance(m, Int8Linear)}
    memory = {n for n in engines if n.endswith(("cross_attn.k", "cross_attn.v"))}
    assert memory and {engines[n] for n in memory} == {"onednn"}
    assert {e for n, e in engines.items() if n not in memory} == {"fbgemm"}
    assert "head" in engines and "layers.0.attn.qkv" in engines
    monkeypatch.setattr(compute, "_pack_for_steps", lambda part: None)
    onednn = load_model(path, dtype="int8")
    assert {m.engine for m in onednn.decoder.modules() if isinstance(m, Int8Linear)} == {"onednn"}
    ids = torch.tensor([[1, 5, 9, 30]])
    g = torch.Generator().manual_seed(1)
    memory_in = torch.randn(1, 20, model.config.decoder.dim, generator=g)
    with torch.inference_mode():
        got, want = model.decoder(ids, memory=memory_in), onednn.decoder(ids, memory=memory_in)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    compute_layers.int8_engine.cache_clear()


def _random_linear(n_in: int, n_out: int, g: torch.Generator, bias: bool = True):
    layer = torch.nn.Linear(n_in, n_out, bias=bias)
    layer.weight.data = torch.randn(n_out, n_in, generator=g)
    if bias:
        layer.bias.data = torch.randn(n_out, generator=g)
    return layer


def test_bfloat16_linear_packed_equals_plain_bfloat16_matmul():
    from llm_compression.core.compute import compute_bytes

    g = torch.Generator().manual_seed(5)
    layer = _random_linear(48, 40, g)
    fast = BFloat16Linear(layer)
    w, b = layer.weight.bfloat16(), layer.bias.bfloat16()
    assert torch.equal(fast.dense()[0], w)
    x = torch.randn(3, 48, 5, generator=g).transpose(1, 2)  # (3, 5, 48), not contiguous

    def close(got, want):  # the bias is added before the output is rounded to bfloat16
        return got.dtype == torch.bfloat16 and float((got - want).norm() / want.norm()) < 4e-3

    with torch.inference_mode():
        assert close(fast(x), torch.nn.functional.linear(x.bfloat16(), w, b))
        assert fast(x[0, :1]).shape == (1, 40)  # one row
        fast.rescale_(2.0, 0.5)
        assert close(fast(x), torch.nn.functional.linear(x.bfloat16(), w * 2, b * 0.5))
    holder = torch.nn.Sequential(fast)
    assert compute_bytes(holder) == 40 * 48 * 2 + 40 * 2  # the weight in bfloat16, the bias


def test_int8_linear_rescale_keeps_the_int8_values():
    g = torch.Generator().manual_seed(6)
    layer = _random_linear(64, 32, g)
    fast = Int8Linear(layer)
    before, _ = torch.ops.quantized.linear_unpack(fast._packed)
    x = torch.randn(5, 64, generator=g)
    with torch.inference_mode():
        want = fast(x)
        fast.rescale_(1.702, 1.702)
        got = fast(x)
    after, bias = torch.ops.quantized.linear_unpack(fast._packed)
    assert torch.equal(before.int_repr(), after.int_repr())
    assert torch.allclose(after.q_per_channel_scales(), before.q_per_channel_scales() * 1.702)
    assert torch.allclose(bias, layer.bias.detach() * 1.702)
    assert float((got - want * 1.702).norm() / (want * 1.702).norm()) < 1e-2


@pytest.mark.parametrize("kind", [BFloat16Linear, Int8Linear])
def test_stacked_linear_computes_the_layers_side_by_side(kind):
    from llm_compression.core.compute_layers import stacked_linear

    g = torch.Generator().manual_seed(7)
    layers = [_random_linear(24, n, g, bias=n != 8) for n in (16, 8, 8)]  # k without bias
    parts = [kind(x) for x in layers]
    fused = stacked_linear(parts)
    x = torch.randn(3, 24, generator=g)
    with torch.inference_mode():
        want = torch.cat([p(x).float() for p in parts], dim=-1)
        got = fused(x).float()
    assert type(fused) is kind and got.shape == (3, 32)
    assert float((got - want).norm() / want.norm()) < 5e-3
    if kind is Int8Linear:  # the int8 rows are the parts' rows
        rows = [torch.ops.quantized.linear_unpack(p._packed)[0].int_repr() for p in parts]
        joined = torch.ops.quantized.linear_unpack(fused._packed)[0].int_repr()
        assert torch.equal(joined, torch.cat(rows))
    assert stacked_linear([parts[0], torch.nn.Linear(24, 4)]) is None


def test_int8_rows_hold_int8_linears_values():
    """Int8Rows (the C kernel's input) holds what Int8Linear packs, and computes like it."""
    from llm_compression.core.compute_layers import Int8Rows

    layer = torch.nn.Linear(64, 48)
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(0))
    rows, packed = Int8Rows(layer), Int8Linear(layer)
    weight, bias = torch.ops.quantized.linear_unpack(packed._packed)
    assert torch.equal(rows.weight.int_repr(), weight.int_repr())
    scales = [w.q_per_channel_scales().float() for w in (rows.weight, weight)]
    assert torch.equal(*scales)  # as the kernel takes them (float32; fbgemm keeps float)
    assert torch.equal(rows.bias, bias)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = layer(x)
        assert (rows(x) - want).abs().max() / want.abs().max() < 0.01


def test_int8_embedding_gathers_scaled_int8_rows(monkeypatch):
    """A lookup in an int8 table: the ids' int8 rows (int8_rows, as the int8 linears quantize,
    chunk by chunk) times their scales, a quarter of the float32 table's bytes."""
    from llm_compression.core.compute_layers import Int8Embedding, int8_rows

    monkeypatch.setattr(Int8Embedding, "CHUNK_ROWS", 64)  # 300 rows: 5 chunks, the last short
    table = torch.nn.Embedding(300, 32)
    torch.nn.init.normal_(table.weight, generator=torch.Generator().manual_seed(0))
    q = Int8Embedding(table)
    assert q.values.dtype == torch.int8 and q.values.nbytes + q.scales.nbytes == 300 * (32 + 4)
    rows = int8_rows(table.weight.detach())
    assert torch.equal(q.values, rows.int_repr())
    assert torch.equal(q.scales, rows.q_per_channel_scales().float())
    ids = torch.tensor([[0, 299, 7], [7, 7, 1]])
    with torch.inference_mode():
        got, want = q(ids), table(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 32)
    torch.testing.assert_close(got, rows.dequantize()[ids], rtol=0, atol=1e-6)
    assert (got - want).abs().max() <= q.scales.max() / 2 + 1e-6  # half a step at most


def test_tied_head_of_an_int8_table_packs_its_rows():
    """The output projection tied to an int8 table holds what Int8Linear of the float table
    would (the same int8 values and scales), made from the int8 rows; float32: no layer."""
    from llm_compression.core.compute import tied_head
    from llm_compression.core.compute_layers import Int8Embedding

    table = torch.nn.Embedding(96, 64)
    torch.nn.init.normal_(table.weight, generator=torch.Generator().manual_seed(2))
    assert tied_head(table, "float32") is None
    head, ref = tied_head(Int8Embedding(table), "int8"), tied_head(table, "int8")
    assert isinstance(head, Int8Linear) and (head.in_features, head.out_features) == (64, 96)
    got, want = (torch.ops.quantized.linear_unpack(h._packed)[0] for h in (head, ref))
    assert torch.equal(got.int_repr(), want.int_repr())
    assert torch.equal(got.q_per_channel_scales().float(), want.q_per_channel_scales().float())
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(head(x), ref(x))


def test_tied_logits_equal_the_plain_matmul_and_keep_gradients():
    """A tied output projection on oneDNN (float32, CPU) gives F.linear's logits within float
    rounding, from the table itself (no copy); gradients to the input and other dtypes take
    F.linear."""
    from llm_compression.core.compute_layers import tied_logits

    g = torch.Generator().manual_seed(4)
    table, h = torch.randn(500, 48, generator=g), torch.randn(2, 3, 48, generator=g)
    want = torch.nn.functional.linear(h, table)
    torch.testing.assert_close(tied_logits(h, table), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tied_logits(h[:, -1:], table), want[:, -1:], rtol=1e-5, atol=1e-5)
    x = h.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tied_logits(x, table).square().sum(), x)
    torch.testing.assert_close(grad, 2 * want @ table)
    half = tied_logits(h.bfloat16(), table.bfloat16())
    assert half.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("kind", ["Float32Linear", "BFloat16Linear"])
@pytest.mark.parametrize("act", ["gelu", "swiglu", "gelu_tanh"])  # swiglu: SiLU
def test_activation_and_residual_fuse_into_the_kernel(kind, act):
    """``activated`` / ``added`` equal ``act(layer(x))`` / ``residual + layer(x)``: erf GELU
    and SiLU as oneDNN post-ops (no separate elementwise op runs), other activations and a
    bfloat16 layer's float32 residual as before; with gradients, the plain ops."""
    from llm_compression.core import compute_layers
    from llm_compression.core.mlp import ACTIVATIONS

    fn, g = ACTIVATIONS[act], torch.Generator().manual_seed(5)
    plain = torch.nn.Linear(48, 40)
    torch.nn.init.normal_(plain.weight, generator=g)
    layer = getattr(compute_layers, kind)(plain)
    x = torch.randn(3, 7, 48, generator=g)
    residual = torch.randn(3, 40, 7, generator=g).transpose(1, 2)  # a strided view, as after a conv
    tol = 1e-5 if kind == "Float32Linear" else 2e-2
    with torch.inference_mode(), torch.profiler.profile() as prof:
        got_act, got_sum = (
            compute_layers.activated(layer, x, fn),
            compute_layers.added(layer, x, residual),
        )
    ran = {e.name for e in prof.events()}
    fused_act = act != "gelu_tanh"
    assert ("aten::gelu" in ran or "aten::silu" in ran) != fused_act, ran
    assert ("aten::add" in ran) == (kind == "BFloat16Linear"), ran
    with torch.inference_mode():
        want = layer(x)
        torch.testing.assert_close(got_act, fn(want), rtol=tol, atol=tol)
        torch.testing.assert_close(got_sum, residual + want, rtol=tol, atol=tol)
    assert got_sum.dtype == torch.float32
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(compute_layers.added(layer, x, residual).sum(), x)
    torch.testing.assert_close(
        grad, layer.dense()[0].float().sum(0).expand_as(x), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("act", ["gelu", "swiglu", "quick_gelu"])
def test_activations_without_a_post_op_run_in_place_on_the_layers_output(act):
    """An int8 layer's (or a plain one's) fresh output takes erf GELU and SiLU in place (the
    same values, no second buffer); other activations and gradients take the plain ops."""
    from llm_compression.core import compute_layers
    from llm_compression.core.mlp import ACTIVATIONS

    fn, g = ACTIVATIONS[act], torch.Generator().manual_seed(6)
    plain = torch.nn.Linear(64, 40)
    torch.nn.init.normal_(plain.weight, generator=g)
    x = torch.randn(3, 64, generator=g)
    for layer in (Int8Linear(plain), plain):
        with torch.inference_mode(), torch.profiler.profile() as prof:
            got = compute_layers.activated(layer, x, fn)
            want = fn(layer(x))
        assert torch.equal(got, want)
        ran = [e.name for e in prof.events()]
        in_place = act in ("gelu", "swiglu")
        assert any(n in ("aten::gelu_", "aten::silu_") for n in ran) == in_place, ran
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(compute_layers.activated(plain, x, fn).sum(), x)
    (want,) = torch.autograd.grad(fn(plain(x)).sum(), x)
    torch.testing.assert_close(grad, want)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_float32_blocks_add_the_residual_in_the_matmul(bert_file):
    """A float32 forward runs no separate residual add or GELU in its blocks (post-norm BERT:
    two adds and a GELU a block fewer than the built model), within parity of its output."""
    model, ref = load_model(bert_file), as_built(bert_file)
    ids = torch.randint(1000, 20000, (2, 9), generator=torch.Generator().manual_seed(0))

    def run(m):
        with torch.inference_mode(), torch.profiler.profile() as prof:
            out = m.encode(ids)
        names = [e.name for e in prof.events()]
        return out, names.count("aten::add"), names.count("aten::gelu") + names.count("aten::gelu_")

    (got, adds, gelus), (want, ref_adds, ref_gelus) = run(model), run(ref)
    assert (ref_adds - adds, ref_gelus, gelus) == (2 * len(model.layers), len(model.layers), 0)
    assert float((got - want).norm() / want.norm()) < 1e-5
