"""Tiny weight files built without transformers and a metadata editor, for the hostile tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from hypothesis import HealthCheck, settings

from llm_compression.config import TransformerConfig
from llm_compression.families import BertConfig, CausalLMConfig, CLIPConfig, build_model
from llm_compression.weightfile import write_model
from llm_compression.weightfile.format import META_PREFIX, METADATA_CHECKSUM_KEY, metadata_checksum
from llm_compression.weightfile.writer import _new_writer

# FUZZ=long runs many more examples, from a random seed; the default is a small, fixed sample.
FUZZ_LONG = os.environ.get("FUZZ") == "long"


def fuzz(examples: int):
    """hypothesis settings: ``examples`` by default, 40x as many under FUZZ=long."""
    return settings(
        max_examples=examples * 40 if FUZZ_LONG else examples,
        deadline=None,
        derandomize=not FUZZ_LONG,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


BERT = BertConfig(
    encoder=TransformerConfig(
        dim=32, n_layers=1, n_heads=4, mlp_dim=64, norm_eps=1e-12, norm_placement="post",
        max_positions=40, final_norm=False,
    ),
    vocab_size=300, max_seq_length=24,
)  # fmt: skip
LLAMA = CausalLMConfig(
    body=TransformerConfig(
        dim=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=64, norm="rmsnorm",
        activation="swiglu", causal=True, positions="rotary", max_positions=64,
        qkv_bias=False, k_bias=False, out_bias=False, mlp_bias=False,
    ),
    vocab_size=300, tie_embeddings=True, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0,
)  # fmt: skip

CLIP = CLIPConfig(
    vision=TransformerConfig(
        dim=48, n_layers=1, n_heads=4, mlp_dim=96, activation="quick_gelu", max_positions=17
    ),
    text=TransformerConfig(
        dim=32, n_layers=1, n_heads=4, mlp_dim=64, activation="quick_gelu", causal=True,
        max_positions=16,
    ),
    image_size=32, patch_size=8, projection_dim=24, vocab_size=300, eos_token_id=2,
)  # fmt: skip


def random_state(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under the canonical names and shapes ``config`` builds."""
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(t.shape) for k, t in build_model(config).state_dict().items()}
    return {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}


def tokenizer_files() -> dict[str, bytes]:
    from hf_tiny import tiny_tokenizer_files

    return tiny_tokenizer_files()


def model_file(path: Path, config=BERT, *, dtype: str = "float32", files=None) -> Path:
    files = tokenizer_files() if files is None else files
    return write_model(path, random_state(config), config=config, dtype=dtype, files=files)


def metadata(path: Path) -> dict[str, str]:
    kv = pq.ParquetFile(path).metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in kv.items() if k.startswith(META_PREFIX.encode())}


def rewrite(path: Path, edit: Callable[[dict[str, str]], None], *, rehash: bool = False) -> Path:
    """Rewrite ``path`` with its rows unchanged and ``edit`` applied to its metadata.

    ``rehash`` recomputes the metadata checksum after the edit (a deliberate, consistent edit);
    otherwise the stored one is kept (an edit the checksum must catch).
    """
    kv = metadata(path)
    edit(kv)
    if rehash and METADATA_CHECKSUM_KEY in kv:
        kv[METADATA_CHECKSUM_KEY] = metadata_checksum(kv)
    source = pq.ParquetFile(path)
    tmp = str(path) + ".edit"
    writer = _new_writer(tmp)
    for i in range(source.num_row_groups):
        writer.write_table(source.read_row_group(i), row_group_size=1)
    writer.add_key_value_metadata(kv)
    writer.close()
    os.replace(tmp, path)
    return path


def generate_in_threads(model, prompts: list[list[int]], max_new_tokens: int) -> list:
    """Each prompt's greedy ids, generated three times over in its own thread, all threads
    sharing ``model`` (what each thread last got)."""
    import threading

    got = [None] * len(prompts)

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = model.generate_ids(prompts[i], max_new_tokens=max_new_tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got
