"""export() of the real packaged models: transformers loads the folders and computes the same.

MiniLM (safetensors source): every source tensor comes back bit for bit from the float32 file and
``BertModel`` outputs equal the original's. SmolLM2 (GGUF source): the exported
``LlamaForCausalLM`` (q/k rows in Hugging Face order) has transformers' own GGUF load's tensors
exactly, and its greedy tokens equal those of the source model and of our runtime.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from llm_compression.convert import export
from llm_compression.loader import load_model
from llm_compression.weights import packaged_minilm, packaged_smollm2

pytestmark = pytest.mark.integration
tf = pytest.importorskip("transformers")

SENTENCES = ["A cat sits on the mat.", "Parquet stores weights column by column.", ""]


def _tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def test_minilm_export_round_trip(real_minilm_parquet, tmp_path):
    src = packaged_minilm()
    out = export(real_minilm_parquet, tmp_path / "minilm")
    source, exported = _tensors(src), _tensors(out)
    assert sorted(exported) == sorted(source)  # the pooler and any buffers included
    for name, tensor in source.items():
        assert torch.equal(exported[name], tensor), name
    want_model = tf.AutoModel.from_pretrained(src).eval()
    got_model = tf.AutoModel.from_pretrained(out).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert (
        batch["input_ids"].tolist()
        == tf.AutoTokenizer.from_pretrained(src)(SENTENCES, padding=True, return_tensors="pt")[
            "input_ids"
        ].tolist()
    )
    with torch.no_grad():
        want, got = want_model(**batch), got_model(**batch)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    assert torch.equal(got.pooler_output, want.pooler_output)


def test_smollm2_gguf_export_is_hf_llama(real_smollm2_parquet, tmp_path):
    out = export(real_smollm2_parquet, tmp_path / "smollm2")
    gguf = packaged_smollm2()
    reference = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    exported = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(exported).__name__ == "LlamaForCausalLM"
    want = reference.state_dict()
    got = exported.state_dict()
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    tokenizer = tf.AutoTokenizer.from_pretrained(out)
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf_tokens = exported.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
        ref_tokens = reference.eval().generate(ids, max_new_tokens=12, do_sample=False)
    assert hf_tokens.tolist() == ref_tokens[0, ids.shape[1] :].tolist()
    model = load_model(real_smollm2_parquet)
    ours = model.generate_ids(ids[0].tolist(), max_new_tokens=12)  # without the end token
    theirs = hf_tokens.tolist()
    if len(ours) < len(theirs):
        assert theirs[len(ours)] in model.config.eos_token_ids
    assert ours == theirs[: len(ours)] and len(ours) >= 1
