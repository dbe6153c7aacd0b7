"""Contrastive and redundancy-reduction losses over paired rows, with missing pairs masked out.

One contrastive function, ``info_nce``, whose options give the variants (learnable temperature,
decoupled, hard-negative weighting, a memory queue, label-defined positives); ``vicreg`` and
``barlow_twins`` take the same ``(a, b, *, valid=None)``. A row whose ``valid`` is False is
removed before anything is computed: it enters no numerator, no denominator, and gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

LOSSES = ("info_nce", "vicreg", "barlow_twins")


def _select(a: torch.Tensor, b: torch.Tensor, valid) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dim() != 2 or a.shape != b.shape:
        raise InputError(
            f"a and b must be (B, D) with the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; pass one row per sample for each modality"
        )
    if valid is None:
        return a, b
    valid = torch.as_tensor(valid, dtype=torch.bool, device=a.device)
    if valid.shape != (a.shape[0],):
        raise InputError(
            f"valid must be a (B,) bool mask with B={a.shape[0]}, got shape {tuple(valid.shape)}"
        )
    return a[valid], b[valid]


def _zero(a: torch.Tensor) -> torch.Tensor:
    """A loss of 0 that keeps the graph (a batch with no usable pair)."""
    return a.sum() * 0.0


def _positives(n: int, k: int, labels, queue_labels, device) -> torch.Tensor:
    """(n, n + k) bool: the diagonal, or every column with the row's label."""
    if labels is None:
        pos = torch.zeros(n, n + k, dtype=torch.bool, device=device)
        pos[:, :n] = torch.eye(n, dtype=torch.bool, device=device)
        return pos
    cols = labels if queue_labels is None else torch.cat([labels, queue_labels])
    return labels[:, None] == cols[None, :]


def _direction(logits: torch.Tensor, pos: torch.Tensor, decoupled: bool, beta: float):
    """Per-row loss: -mean over positives of the logit + log of the weighted denominator."""
    neg = ~pos
    log_w = torch.zeros_like(logits)
    if beta:
        # Hard negatives weigh more: w_ij = n_neg * softmax_j(beta * logit_ij) over the negatives.
        scores = (beta * logits.detach()).masked_fill(pos, float("-inf"))
        n_neg = neg.sum(dim=1, keepdim=True).clamp(min=1).to(logits.dtype)
        log_w = torch.log_softmax(scores, dim=1) + n_neg.log()
        log_w = log_w.masked_fill(pos, 0.0)
    if decoupled:
        log_w = log_w.masked_fill(pos, float("-inf"))
    denominator = torch.logsumexp(logits + log_w, dim=1)  # (n,)
    numerator = (logits * pos).sum(dim=1) / pos.sum(dim=1)
    return denominator - numerator


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.07,
    decoupled: bool = False,
    hard_negative_beta: float = 0.0,
    queue: tuple[torch.Tensor, torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between paired unit rows ``a`` (B, D) and ``b`` (B, D).

    By default, over the valid rows ``v`` only:
    ``0.5 * (CE(a_v b_v^T / t, diag) + CE(b_v a_v^T / t, diag))``.

    Parameters
    ----------
    valid : (B,) bool, True where the sample has both modalities (None: all rows).
    temperature : a float, or a tensor (``Temperature()`` in ``align.heads``) to learn it.
    decoupled : leave the positive out of the denominator (Yeh et al., DCL).
    hard_negative_beta : > 0 weighs each negative by ``n_neg * softmax(beta * logit)`` over the
        row's negatives (weights carry no gradient; 0 = uniform, the default formula).
    queue : ``(queue_a, queue_b)`` earlier rows (K, D) used as extra negatives (``MemoryQueue``):
        the a->b direction scores against ``[b_v; queue_b]``, b->a against ``[a_v; queue_a]``.
    labels : (B,) int; positives are all columns with the row's label (supervised contrastive),
        each averaged in the numerator. ``queue_labels`` (K,) label the queue rows.

    Example
    -------
    >>> loss = info_nce(text, image, valid=has_both, temperature=0.07)
    """
    n_rows = a.shape[0]
    a_v, b_v = _select(a, b, valid)
    if labels is not None:
        labels = torch.as_tensor(labels, device=a.device)
        if labels.shape != (n_rows,):
            raise InputError(f"labels must be (B,) with B={n_rows}, got {tuple(labels.shape)}")
        if valid is not None:
            labels = labels[torch.as_tensor(valid, dtype=torch.bool, device=a.device)]
    qa, qb = queue if queue is not None else (a_v[:0], b_v[:0])
    n, k = a_v.shape[0], qb.shape[0]
    if n == 0 or (n == 1 and k == 0):
        return _zero(a)  # no negative anywhere: nothing to contrast
    if k and labels is not None and queue_labels is None:
        raise InputError("labels with a queue need queue_labels (K,) for the queue rows")
    pos = _positives(n, k, labels, queue_labels, a.device)
    ab = a_v @ torch.cat([b_v, qb.detach()]).T / temperature  # (n, n + k)
    ba = b_v @ torch.cat([a_v, qa.detach()]).T / temperature  # (n, n + k)
    loss_ab = _direction(ab, pos, decoupled, hard_negative_beta)
    loss_ba = _direction(ba, pos, decoupled, hard_negative_beta)
    return 0.5 * (loss_ab.mean() + loss_ba.mean())


class MemoryQueue:
    """A FIFO of the last ``size`` detached row pairs, used as ``info_nce(queue=q.tensors())``."""

    def __init__(self, size: int, dim: int) -> None:
        if size < 1:
            raise InputError(f"queue size must be a positive integer, got {size!r}")
        self.size = size
        self.a = torch.zeros(0, dim)
        self.b = torch.zeros(0, dim)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a, self.b

    def push(self, a: torch.Tensor, b: torch.Tensor, valid=None) -> None:
        a, b = _select(a.detach(), b.detach(), valid)
        self.a = torch.cat([a, self.a])[: self.size]
        self.b = torch.cat([b, self.b])[: self.size]


def vicreg(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg (Bardes et al.): invariance MSE + variance hinge + off-diagonal covariance.

    ``sim * mean((a-b)^2) + var * (v(a) + v(b)) + cov * (c(a) + c(b))`` with
    ``v(z) = mean_d relu(gamma - sqrt(Var(z_d) + eps))`` and
    ``c(z) = sum_{i != j} Cov(z)_ij^2 / D`` (unbiased, over the valid rows).
    """
    a_v, b_v = _select(a, b, valid)
    if a_v.shape[0] < 2:
        return _zero(a)
    invariance = F.mse_loss(a_v, b_v)
    return sim_weight * invariance + sum(
        var_weight * _variance(z, gamma, eps) + cov_weight * _covariance(z) for z in (a_v, b_v)
    )


def _variance(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)  # (D, D)
    off = cov - torch.diag(torch.diag(cov))
    return off.pow(2).sum() / d


def barlow_twins(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    off_diagonal_weight: float = 5e-3,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al.): ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``,
    ``C = a_n^T b_n / n`` of the batch-standardised valid rows (biased std, as batch norm)."""
    a_v, b_v = _select(a, b, valid)
    n = a_v.shape[0]
    if n < 2:
        return _zero(a)
    a_n = (a_v - a_v.mean(0)) / torch.sqrt(a_v.var(0, unbiased=False) + eps)
    b_n = (b_v - b_v.mean(0)) / torch.sqrt(b_v.var(0, unbiased=False) + eps)
    c = a_n.T @ b_n / n  # (D, D)
    on = (1 - torch.diagonal(c)).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on + off_diagonal_weight * off
