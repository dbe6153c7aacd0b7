"""Phase 2: the pet-behaviour report, written by a frozen causal LM from soft prompts.

The report's text is built from fixed pieces around the values (``PIECES``); training teaches the
projector to make the LLM write the record's values (teacher forcing, LLM frozen), and decoding is
constrained: at each value the LLM scores only the schema's allowed strings (its summed
log-probability) and continues with a fixed piece, so the result always parses and validates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

EMOTIONS = ("calm", "content", "playful", "alert", "anxious", "curious")
BEHAVIOURS = ("resting", "eating", "moving", "vocalising", "grooming", "exploring", "watching")
MAX_BEHAVIOURS = 3
PROMPT = "Describe the pet's emotion and behaviours as JSON.\n"
OPEN, MID, SEP, CLOSE = '{"emotion": "', '", "behaviours": ["', '", "', '"]}'


def report_schema(modalities, emotions=EMOTIONS, behaviours=BEHAVIOURS) -> dict:
    """The JSON Schema a report validates against (``validate_report`` checks the same)."""
    evidence = {
        "type": "object", "required": ["present", "nearest", "score"],
        "properties": {"present": {"type": "boolean"},
                       "nearest": {"type": ["string", "null"]},
                       "score": {"type": ["number", "null"]}},
    }  # fmt: skip
    return {
        "type": "object",
        "required": ["emotion", "behaviours", "confidence", "evidence"],
        "properties": {
            "emotion": {"enum": list(emotions)},
            "behaviours": {"type": "array", "items": {"enum": list(behaviours)}, "minItems": 1,
                           "maxItems": MAX_BEHAVIOURS, "uniqueItems": True},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "evidence": {"type": "object", "required": list(modalities),
                         "properties": {m: evidence for m in modalities}},
        },
    }  # fmt: skip


def validate_report(report, modalities, emotions=EMOTIONS, behaviours=BEHAVIOURS) -> list[str]:
    """Problems of ``report`` against ``report_schema`` (empty when it validates)."""
    if not isinstance(report, dict):
        return ["the report is not a JSON object"]
    problems = [
        f"missing key {k!r}" for k in report_schema(modalities)["required"] if k not in report
    ]
    if problems:
        return problems
    if report["emotion"] not in emotions:
        problems.append(f"emotion {report['emotion']!r} not in {list(emotions)}")
    b = report["behaviours"]
    if not isinstance(b, list) or not 1 <= len(b) <= MAX_BEHAVIOURS or len(set(b)) != len(b) or \
            any(x not in behaviours for x in b):  # fmt: skip
        problems.append(f"behaviours {b!r}: 1-{MAX_BEHAVIOURS} distinct of {list(behaviours)}")
    c = report["confidence"]
    if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 1:
        problems.append(f"confidence {c!r} is not a number in [0, 1]")
    ev = report["evidence"]
    for m in modalities:
        e = ev.get(m) if isinstance(ev, dict) else None
        if not isinstance(e, dict) or not isinstance(e.get("present"), bool) or \
                not isinstance(e.get("nearest"), str | None) or \
                not (e.get("score") is None or isinstance(e.get("score"), int | float)):  # fmt: skip
            problems.append(f"evidence[{m!r}] is not {{present: bool, nearest, score}}")
    return problems


@dataclass
class Pieces:
    """Token ids of the fixed pieces and of each allowed value (encoded separately, so training
    and constrained decoding see the same tokens)."""

    prompt: list[int]
    open: list[int]
    mid: list[int]
    sep: list[int]
    close: list[int]
    emotions: dict[str, list[int]]
    behaviours: dict[str, list[int]]

    @classmethod
    def build(cls, tokenizer, emotions=EMOTIONS, behaviours=BEHAVIOURS) -> Pieces:
        enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
        return cls(list(tokenizer.encode(PROMPT, add_special_tokens=True)), enc(OPEN), enc(MID),
                   enc(SEP), enc(CLOSE), {e: enc(e) for e in emotions},
                   {b: enc(b) for b in behaviours})  # fmt: skip

    def max_len(self) -> int:
        """Tokens of the longest report (prompt included) plus one option being scored."""
        longest = lambda table: max(len(ids) for ids in table.values())  # noqa: E731
        per_behaviour = longest(self.behaviours) + max(len(self.sep), len(self.close))
        return len(self.prompt) + len(self.open) + longest(self.emotions) + len(self.mid) + \
            MAX_BEHAVIOURS * per_behaviour + max(per_behaviour, longest(self.emotions))  # fmt: skip

    def target(self, emotion: str, behaviours) -> list[int]:
        """The report's value ids after the prompt (what teacher forcing predicts)."""
        ids = self.open + self.emotions[emotion] + self.mid
        for i, b in enumerate(behaviours[:MAX_BEHAVIOURS]):
            ids += (self.sep if i else []) + self.behaviours[b]
        return ids + self.close


def soft_prompts(model, aligned: dict, present: dict) -> torch.Tensor:
    """(B, M * N, C) soft prompts; modalities absent from ``aligned`` use ``<MISSING>``."""
    batch = next(iter(aligned.values())).shape[0]
    full, mask = {}, {}
    for m in model.config.modalities:
        full[m] = aligned.get(m, torch.zeros(batch, model.config.dim))
        mask[m] = present.get(m, torch.zeros(batch, dtype=torch.bool))
    return model.projector(full, mask)


class ReportObjective:
    """Teacher-forced cross-entropy of each record's report, the LLM frozen."""

    def __init__(self, llm, pieces: Pieces, targets: dict[str, tuple[str, tuple[str, ...]]]):
        self.llm, self.pieces = llm, pieces
        self.targets = targets  # id -> (emotion, behaviours)
        for p in llm.parameters():
            p.requires_grad_(False)

    def __call__(self, model, aligned: dict, batch: dict) -> torch.Tensor:
        rows = [i for i, rid in enumerate(batch["ids"]) if rid in self.targets]
        if not rows:
            return next(iter(aligned.values())).sum() * 0.0
        keep = torch.tensor(rows)
        soft = soft_prompts(model, {m: z[keep] for m, z in aligned.items()},
                            {m: p[keep] for m, p in batch["present"].items()})  # fmt: skip
        seqs = [self.pieces.target(*self.targets[batch["ids"][i]]) for i in rows]
        return _sequence_nll(self.llm, soft, self.pieces.prompt, seqs).mean()


def _sequence_nll(llm, soft: torch.Tensor, prefix: list[int], seqs: list[list[int]]):
    """(B,) summed negative log-likelihood of ``seqs[i]`` after ``soft[i]`` and ``prefix``."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([prefix + s + [0] * (width - len(s)) for s in seqs])  # (B, L + W)
    logits = llm.logits(ids, prefix_embeds=soft)  # cast to the embeddings' dtype there
    start = soft.shape[1] + len(prefix) - 1  # the logits that predict seqs[:, 0]
    logp = F.log_softmax(logits[:, start : start + width].float(), dim=-1)  # (B, W, V)
    target = ids[:, len(prefix) :]
    token_lp = logp.gather(-1, target[..., None]).squeeze(-1)  # (B, W)
    mask = torch.tensor([[j < len(s) for j in range(width)] for s in seqs])
    return -(token_lp * mask).sum(dim=1)


class _Prefix:
    """The report written so far, run once through the LLM with its keys and values kept.

    Scoring a choice then runs only the options' tokens on a copy of those keys and values, and
    the chosen piece extends the prefix: each token of the report passes through the LLM once,
    instead of the whole prompt again for every option of every choice.
    """

    def __init__(self, llm, soft: torch.Tensor, ids: list[int], max_len: int) -> None:
        self.llm, self.length = llm, 0
        self.cache = llm.new_cache(1, max_len)
        self.last = self._run(ids, soft)

    def _run(self, ids: list[int], soft=None) -> torch.Tensor:
        """Append ``ids`` to the cache; the log-probabilities of the token after them (V,)."""
        logits = self.llm.logits(torch.tensor([ids]), cache=self.cache, start_pos=self.length,
                                 last_only=True, prefix_embeds=soft)  # fmt: skip
        self.length += len(ids) + (0 if soft is None else soft.shape[1])
        return F.log_softmax(logits[0, -1].float(), dim=-1)

    def extend(self, ids: list[int]) -> None:
        self.last = self._run(ids)

    def _branches(self, n: int, width: int) -> list:
        """``n`` copies of the cached keys and values with room for ``width`` more positions."""
        branches = self.llm.new_cache(n, self.length + width)
        for branch, layer in zip(branches, self.cache, strict=True):
            branch.k[:, :, : self.length] = layer.k[:, :, : self.length]
            branch.v[:, :, : self.length] = layer.v[:, :, : self.length]
        return branches

    @torch.no_grad()
    def score(self, options: dict[str, list[int]]) -> dict[str, float]:
        """Summed log-probability of each option's ids after the prefix (one batched pass)."""
        names, seqs = list(options), list(options.values())
        logp = self.last[[s[0] for s in seqs]].clone()  # the first token of each option
        width = max(len(s) for s in seqs) - 1
        if width:
            rest = torch.tensor([s[:-1] + [0] * (width + 1 - len(s)) for s in seqs])  # (n, W)
            logits = self.llm.logits(rest, cache=self._branches(len(seqs), width),
                                     start_pos=self.length)  # fmt: skip
            step = F.log_softmax(logits.float(), dim=-1)  # position j predicts s[j + 1]
            for i, s in enumerate(seqs):
                logp[i] += step[i, torch.arange(len(s) - 1), s[1:]].sum()
        return dict(zip(names, logp.tolist(), strict=True))


def _softmax(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values())
    exp = {k: math.exp(v - top) for k, v in scores.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}


def decode_report(llm, pieces: Pieces, soft: torch.Tensor) -> tuple[str, list[str], float]:
    """(emotion, behaviours, confidence) by constrained decoding after one soft prompt (1, P, C)."""
    prefix = _Prefix(llm, soft, pieces.prompt + pieces.open, soft.shape[1] + pieces.max_len())
    emotion_p = _softmax(prefix.score(pieces.emotions))
    emotion = max(emotion_p, key=emotion_p.get)
    prefix.extend(pieces.emotions[emotion] + pieces.mid)
    chosen: list[str] = []
    while len(chosen) < MAX_BEHAVIOURS:
        left = {b: ids for b, ids in pieces.behaviours.items() if b not in chosen}
        best = max((s := prefix.score(left)), key=s.get)
        chosen.append(best)
        prefix.extend(pieces.behaviours[best])
        ends = prefix.score({"more": pieces.sep, "end": pieces.close})
        if not left or ends["end"] >= ends["more"] or len(chosen) == len(pieces.behaviours):
            break
        prefix.extend(pieces.sep)
    return emotion, chosen, emotion_p[emotion]


def evidence(model, aligned: dict, modalities) -> dict:
    """Per modality: present, nearest label prototype and its cosine (None when absent)."""
    labels = model.config.labels
    out = {}
    for m in modalities:
        if m not in aligned or not labels:
            out[m] = {"present": m in aligned, "nearest": None, "score": None}
            continue
        cos = aligned[m][0] @ model.prototypes.T  # (L,)
        best = int(cos.argmax())
        out[m] = {"present": True, "nearest": labels[best], "score": round(float(cos[best]), 4)}
    return out


@torch.no_grad()
def write_report(model, llm, pieces: Pieces, aligned: dict) -> dict:
    """The report of one input set: ``aligned`` maps present modalities to (1, dim) vectors."""
    if not aligned:
        raise InputError("no input given; pass at least one of an image, an audio file or a text")
    unknown = sorted(set(aligned) - set(model.config.modalities))
    if unknown:
        raise InputError(
            f"the checkpoint has no head for {unknown}; it aligns {list(model.config.modalities)}"
        )
    present = {m: torch.ones(1, dtype=torch.bool) for m in aligned}
    emotion, behaviours, confidence = decode_report(
        llm, pieces, soft_prompts(model, aligned, present)
    )
    report = {
        "emotion": emotion, "behaviours": behaviours, "confidence": round(confidence, 4),
        "evidence": evidence(model, aligned, model.config.modalities),
    }  # fmt: skip
    problems = validate_report(report, model.config.modalities, pieces.emotions, pieces.behaviours)
    if problems:  # cannot happen by construction; kept as the contract's guard
        raise InputError(f"internal: the report does not validate: {problems}")
    return json.loads(json.dumps(report))
