"""HF ``generate`` on a left-padded batch: the reference for our batched generation."""

from __future__ import annotations

import torch


def hf_left_padded(hf, rows: list[list[int]], *, pad: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy new tokens of each row, the rows left-padded with ``pad`` into one batch."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad)  # fmt: skip
    return out[:, width:].tolist()
