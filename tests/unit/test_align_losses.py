"""Each alignment loss equals its formula computed directly (loops over rows) on a small batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_compression.align import MemoryQueue, barlow_twins, info_nce, vicreg
from llm_compression.errors import InputError

torch.manual_seed(0)
B, D, T = 6, 5, 0.1
A = F.normalize(torch.randn(B, D, dtype=torch.float64), dim=1)
Bm = F.normalize(torch.randn(B, D, dtype=torch.float64), dim=1)
VALID = torch.tensor([True, False, True, True, False, True])


def _row_loss(q, keys, positives, *, weights=None, decoupled=False):
    """-mean_p log(exp(q.k_p/T) / sum_j w_j exp(q.k_j/T)), the sum over j skipping positives
    when decoupled."""
    s = [float(q @ k) / T for k in keys]
    w = weights or [1.0] * len(keys)
    den = sum(w[j] * math.exp(s[j]) for j in range(len(keys)) if not (decoupled and j in positives))
    return sum(-(s[p] - math.log(den)) for p in positives) / len(positives)


def _direct(a, b, **kw):
    n = a.shape[0]
    ab = sum(_row_loss(a[i], list(b), [i], **kw) for i in range(n)) / n
    ba = sum(_row_loss(b[i], list(a), [i], **kw) for i in range(n)) / n
    return 0.5 * (ab + ba)


def test_default_is_symmetric_cross_entropy_over_valid_rows():
    av, bv = A[VALID], Bm[VALID]
    got = info_nce(A, Bm, valid=VALID, temperature=T)
    assert got.item() == pytest.approx(_direct(av, bv), rel=1e-9)
    logits = av @ bv.T / T
    target = torch.arange(len(av))
    ce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert got.item() == pytest.approx(ce.item(), rel=1e-9)


def test_missing_rows_get_no_gradient_and_change_nothing():
    a, b = A.clone().requires_grad_(), Bm.clone().requires_grad_()
    loss = info_nce(a, b, valid=VALID, temperature=T)
    loss.backward()
    assert torch.all(a.grad[~VALID] == 0) and torch.all(b.grad[~VALID] == 0)
    assert a.grad[VALID].abs().sum() > 0
    changed = A.clone()
    changed[~VALID] = 100.0  # garbage in the missing rows
    assert info_nce(changed, Bm, valid=VALID, temperature=T).item() == pytest.approx(loss.item())


def test_decoupled_leaves_the_positive_out_of_the_denominator():
    got = info_nce(A, Bm, temperature=T, decoupled=True)
    assert got.item() == pytest.approx(_direct(A, Bm, decoupled=True), rel=1e-9)


def test_hard_negative_weighting():
    beta = 0.5

    def direct(a, b):
        total = 0.0
        for i in range(B):
            s = [float(a[i] @ b[j]) / T for j in range(B)]
            negs = [j for j in range(B) if j != i]
            z = sum(math.exp(beta * s[j]) for j in negs)
            w = [1.0 if j == i else (B - 1) * math.exp(beta * s[j]) / z for j in range(B)]
            total += _row_loss(a[i], list(b), [i], weights=w)
        return total / B

    got = info_nce(A, Bm, temperature=T, hard_negative_beta=beta)
    assert got.item() == pytest.approx(0.5 * (direct(A, Bm) + direct(Bm, A)), rel=1e-9)


def test_memory_queue_adds_negatives():
    qa = F.normalize(torch.randn(3, D, dtype=torch.float64), dim=1)
    qb = F.normalize(torch.randn(3, D, dtype=torch.float64), dim=1)
    got = info_nce(A, Bm, temperature=T, queue=(qa, qb))
    ab = sum(_row_loss(A[i], list(Bm) + list(qb), [i]) for i in range(B)) / B
    ba = sum(_row_loss(Bm[i], list(A) + list(qa), [i]) for i in range(B)) / B
    assert got.item() == pytest.approx(0.5 * (ab + ba), rel=1e-9)
    q = MemoryQueue(4, D)
    q.push(A.float(), Bm.float(), VALID)
    assert q.a.shape == (4, D) and torch.allclose(q.a, A[VALID].float())


def test_supervised_positives_are_every_same_label_column():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = info_nce(A, Bm, temperature=T, labels=labels)

    def direct(a, b):
        rows = [_row_loss(a[i], list(b), [j for j in range(B) if labels[j] == labels[i]])
                for i in range(B)]  # fmt: skip
        return sum(rows) / B

    assert got.item() == pytest.approx(0.5 * (direct(A, Bm) + direct(Bm, A)), rel=1e-9)
    unique = info_nce(A, Bm, temperature=T, labels=torch.arange(B))
    assert unique.item() == pytest.approx(info_nce(A, Bm, temperature=T).item(), rel=1e-12)


def test_learnable_temperature_gets_a_gradient():
    log_t = torch.tensor(math.log(T), dtype=torch.float64, requires_grad=True)
    loss = info_nce(A, Bm, temperature=log_t.exp())
    loss.backward()
    assert loss.item() == pytest.approx(info_nce(A, Bm, temperature=T).item())
    assert log_t.grad is not None and log_t.grad != 0


def test_vicreg_formula():
    got = vicreg(A, Bm, valid=VALID)
    a, b = A[VALID], Bm[VALID]
    n = a.shape[0]
    inv = sum(float((a[i, d] - b[i, d]) ** 2) for i in range(n) for d in range(D)) / (n * D)

    def var_cov(z):
        mean = [sum(float(z[i, d]) for i in range(n)) / n for d in range(D)]
        cov = [[sum((float(z[i, p]) - mean[p]) * (float(z[i, q]) - mean[q]) for i in range(n))
                 / (n - 1) for q in range(D)] for p in range(D)]  # fmt: skip
        v = sum(max(0.0, 1 - math.sqrt(cov[d][d] + 1e-4)) for d in range(D)) / D
        c = sum(cov[p][q] ** 2 for p in range(D) for q in range(D) if p != q) / D
        return v, c

    (va, ca), (vb, cb) = var_cov(a), var_cov(b)
    expected = 25 * inv + 25 * (va + vb) + (ca + cb)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_barlow_twins_formula():
    got = barlow_twins(A, Bm, valid=VALID, off_diagonal_weight=0.01)
    a, b = A[VALID], Bm[VALID]
    n = a.shape[0]

    def standard(z):
        mean = z.mean(0)
        std = torch.sqrt(((z - mean) ** 2).sum(0) / n + 1e-5)
        return (z - mean) / std

    an, bn = standard(a), standard(b)
    c = [[float(sum(an[k, i] * bn[k, j] for k in range(n))) / n for j in range(D)]
         for i in range(D)]  # fmt: skip
    on = sum((1 - c[i][i]) ** 2 for i in range(D))
    off = sum(c[i][j] ** 2 for i in range(D) for j in range(D) if i != j)
    assert got.item() == pytest.approx(on + 0.01 * off, rel=1e-9)


@pytest.mark.parametrize("loss", [info_nce, vicreg, barlow_twins])
def test_no_valid_pair_is_a_zero_loss_not_nan(loss):
    a = A.clone().requires_grad_()
    out = loss(a, Bm, valid=torch.zeros(B, dtype=torch.bool))
    out.backward()
    assert out.item() == 0 and torch.all(a.grad == 0)


def test_bad_shapes_are_typed_errors():
    with pytest.raises(InputError, match="same shape"):
        info_nce(A, Bm[:3])
    with pytest.raises(InputError, match="valid must be"):
        info_nce(A, Bm, valid=torch.ones(3, dtype=torch.bool))
