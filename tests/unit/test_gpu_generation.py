"""Generation on a CUDA device (the `gpu` marker): greedy tokens equal the CPU's and HF's. Skipped,
with the reason, where torch sees no CUDA device; run them wherever one is present: `pytest -m gpu`."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_tiny import tiny_causal_lm

from llm_compression.families import build_model
from llm_compression.loader import load_weights_into

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this machine"),
]


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
def test_grouped_query_decode_on_gpu_equals_cpu(arch: str) -> None:
    # llama's tiny config has fewer KV heads than query heads: the grouped decode path
    hf, cfg, state = tiny_causal_lm(arch, tie=False)
    cpu = load_weights_into(build_model(cfg), state)
    gpu = copy.deepcopy(cpu).to("cuda")
    prompt = [5, 17, 33, 8, 61, 9]
    assert gpu.generate_ids(prompt, max_new_tokens=20) == cpu.generate_ids(
        prompt, max_new_tokens=20
    )


def test_gpu_logits_close_to_cpu() -> None:
    hf, cfg, state = tiny_causal_lm("llama", tie=True)
    cpu = load_weights_into(build_model(cfg), state)
    gpu = copy.deepcopy(cpu).to("cuda")
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(
            gpu.logits(ids.cuda()).cpu(), cpu.logits(ids), atol=1e-4, rtol=1e-4
        )


def test_batched_decode_on_gpu_equals_each_prompt_alone() -> None:
    _, cfg, state = tiny_causal_lm("llama", tie=False)
    gpu = load_weights_into(build_model(cfg), state).to("cuda")
    prompts = [[5, 17, 33, 8, 61, 9], [3, 4], [7, 8, 9, 10]]
    batch = gpu.generate_ids(prompts, max_new_tokens=12)
    assert batch == [gpu.generate_ids(p, max_new_tokens=12) for p in prompts]
