"""Metrics, per-dtype thresholds and the validation report.

Thresholds depend on the storage dtype recorded in the weight file (``storage_dtype``):

==========  ==============  ===========================================================
dtype       min cosine      exact checks
==========  ==============  ===========================================================
float32     0.99999         greedy tokens identical (64 new), transcription identical
float16     0.9999          reported only
bfloat16    0.999           reported only (8-bit mantissa: ~3 significant digits)
int8        0.99            reported only; top-1 agreement reported
==========  ==============  ===========================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, ValidationFailedError

MIN_COSINE = {"float32": 0.99999, "float16": 0.9999, "bfloat16": 0.999, "int8": 0.99}
EXACT_DTYPES = ("float32",)  # token / text identity is required only for these


@dataclass(frozen=True)
class Thresholds:
    """What a store of ``dtype`` must reach."""

    dtype: str
    min_cosine: float
    exact: bool  # greedy tokens and transcriptions must be identical

    @classmethod
    def for_dtype(cls, dtype: str) -> Thresholds:
        if dtype not in MIN_COSINE:
            raise ConfigError(
                f"no validation thresholds for storage dtype {dtype!r}; expected one of "
                f"{sorted(MIN_COSINE)}"
            )
        return cls(dtype, MIN_COSINE[dtype], dtype in EXACT_DTYPES)


@dataclass
class OutputResult:
    """One compared output: numeric (``cosine``/``max_abs_diff``) or exact (``identical``)."""

    name: str
    kind: str  # "embedding" | "logits" | "tokens" | "text"
    n: int  # inputs compared
    cosine: float | None = None  # min over the inputs
    max_abs_diff: float | None = None
    top1_agreement: float | None = None  # fraction in [0, 1]
    identical: bool | None = None
    required: bool = True  # whether ``passed`` takes part in the verdict
    passed: bool = True
    detail: str = ""


@dataclass
class ValidationReport:
    """Every compared output of one weight file against its reference."""

    path: str
    reference: str
    family: str
    dtype: str
    thresholds: Thresholds
    outputs: list[OutputResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs if o.required)

    def failures(self) -> list[OutputResult]:
        return [o for o in self.outputs if o.required and not o.passed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table, one row per output, and the verdict."""
        head = f"{'output':<28} {'n':>3} {'min cosine':>12} {'max |diff|':>11} {'top-1':>6} {'exact':>6}  ok"
        rows = [
            f"{self.path} vs {self.reference}",
            f"family {self.family}, storage {self.dtype}: min cosine {self.thresholds.min_cosine}"
            + (", exact tokens/text" if self.thresholds.exact else ""),
            head,
            "-" * len(head),
        ]
        rows += [_row(o) for o in self.outputs]
        for o in self.outputs:
            if o.detail:
                rows.append(f"  {o.name}: {o.detail}")
        rows.append("PASSED" if self.passed else f"FAILED: {[o.name for o in self.failures()]}")
        return "\n".join(rows)

    def check(self) -> ValidationReport:
        """Raise ValidationFailedError (with the table) unless every required output passed."""
        if not self.passed:
            raise ValidationFailedError(
                f"{self.path} differs from its reference {self.reference} beyond the "
                f"{self.dtype} thresholds:\n{self.table()}\nRe-convert from the same source; if it "
                "persists, compare tensors with `llm-compression inspect` and report the family"
            )
        return self


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)


def _row(o: OutputResult) -> str:
    exact = "-" if o.identical is None else ("yes" if o.identical else "NO")
    ok = ("ok" if o.passed else "FAIL") if o.required else "(info)"
    top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.0%}"
    return (
        f"{o.name:<28} {o.n:>3} {_fmt(o.cosine, '12.8f')} {_fmt(o.max_abs_diff, '11.3g')} "
        f"{top1:>6} {exact:>6}  {ok}"
    )


def _as2d(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().float().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    return a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)


def cosines(ours: Any, ref: Any) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays (float64)."""
    a, b = _as2d(ours), _as2d(ref)
    if a.shape != b.shape:
        raise ValidationFailedError(
            f"outputs have different shapes: ours {a.shape}, reference {b.shape}; the converted "
            "config does not match the source"
        )
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-300)


def nearest_agreement(ours: Any, ref: Any) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same on both sides."""
    a, b = _as2d(ours), _as2d(ref)
    if a.shape[0] < 3:
        return 1.0
    picks = []
    for m in (a, b):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        sim = m @ m.T
        np.fill_diagonal(sim, -np.inf)
        picks.append(sim.argmax(axis=1))
    return float(np.mean(picks[0] == picks[1]))


def compare_vectors(
    name: str, ours: Any, ref: Any, th: Thresholds, *, kind: str = "embedding", top1: Any = None
) -> OutputResult:
    """Cosine (min over rows) and max abs diff; ``top1`` is an optional agreement fraction."""
    cos = cosines(ours, ref)
    diff = float(np.abs(_as2d(ours) - _as2d(ref)).max())
    worst = float(cos.min())
    return OutputResult(
        name, kind, len(cos), cosine=worst, max_abs_diff=diff,
        top1_agreement=None if top1 is None else float(top1),
        passed=worst >= th.min_cosine,
        detail="" if worst >= th.min_cosine else f"input {int(cos.argmin())} is the worst",
    )  # fmt: skip


def compare_sequences(
    name: str, ours: Sequence[Sequence[int]], ref: Sequence[Sequence[int]], th: Thresholds
) -> OutputResult:
    """Token sequences identical; the detail names the first divergence."""
    problems = []
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        a, b = list(a), list(b)
        if a != b:
            at = next(
                (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            problems.append(
                f"input {i}: first divergence at new token {at} "
                f"(ours {a[at : at + 3]}, reference {b[at : at + 3]}; lengths {len(a)} / {len(b)})"
            )
    same = not problems
    return OutputResult(
        name, "tokens", len(ours), identical=same, required=th.exact, passed=same,
        detail="; ".join(problems) or f"lengths {[len(list(s)) for s in ours]}",
    )  # fmt: skip


def compare_texts(
    name: str, ours: Sequence[str], ref: Sequence[str], th: Thresholds
) -> OutputResult:
    """Texts identical (transcriptions); the detail shows both texts."""
    same = list(ours) == list(ref)
    detail = " | ".join(f"ours {a!r} ref {b!r}" for a, b in zip(ours, ref, strict=True))
    return OutputResult(
        name, "text", len(ours), identical=same, required=th.exact, passed=same, detail=detail
    )
