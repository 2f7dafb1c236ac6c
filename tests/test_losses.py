"""Tests for prefheads.losses: the maths of PAPER.md section 2."""

import math

import pytest
import torch

from prefheads import losses
from prefheads.losses import (
    PAPER_BETA,
    PAPER_CDPO_EPS,
    PAPER_DPH_EPS,
    cdpo_loss,
    contrastive_dph_loss,
    dpo_loss,
    get_loss,
    joint_loss,
    separable_dph_loss,
)

EPSILONS = [0.01, 0.1, 0.25, 0.4]
COMMON_KEYS = {"loss", "pair_accuracy", "margin", "reward_chosen", "reward_rejected"}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _grads(fn, r_w, r_l, **kw):
    r_w = torch.tensor(r_w, dtype=torch.float64, requires_grad=True)
    r_l = torch.tensor(r_l, dtype=torch.float64, requires_grad=True)
    loss, _ = fn(r_w, r_l, **kw)
    loss.backward()
    return r_w.grad, r_l.grad


def _descend(fn, r_w, r_l, eps, max_steps=5000, lr=4.0):
    """Plain gradient descent until the gradient is ~0 (or max_steps)."""
    r_w = r_w.clone().requires_grad_(True)
    r_l = r_l.clone().requires_grad_(True)
    opt = torch.optim.SGD([r_w, r_l], lr=lr)
    for _ in range(max_steps):
        opt.zero_grad()
        loss, _ = fn(r_w, r_l, eps=eps)
        # the loss is a batch mean: scale so each element takes a full-size step
        (loss * r_w.numel()).backward()
        if max(r_w.grad.abs().max(), r_l.grad.abs().max()) < 1e-7:
            break
        opt.step()
    return r_w.detach(), r_l.detach()


# ---- Theorem 1: separable -------------------------------------------------------------------

@pytest.mark.parametrize("eps", EPSILONS)
def test_separable_gradient_vanishes_at_theorem1_optimum(eps):
    star = _logit(1 - eps)  # log((1-eps)/eps)
    g_w, g_l = _grads(separable_dph_loss, [star], [-star], eps=eps)
    assert abs(g_w.item()) < 1e-12 and abs(g_l.item()) < 1e-12
    # and not elsewhere: the gradient has the sign that pushes toward the optimum
    g_w, g_l = _grads(separable_dph_loss, [star + 1.0], [-star - 1.0], eps=eps)
    assert g_w.item() > 0 and g_l.item() < 0


@pytest.mark.parametrize("eps", EPSILONS)
def test_separable_gradient_descent_converges_to_theorem1(eps):
    torch.manual_seed(0)
    r_w, r_l = _descend(separable_dph_loss, torch.randn(8, dtype=torch.float64) * 3,
                        torch.randn(8, dtype=torch.float64) * 3, eps, lr=6.0)
    assert torch.allclose(r_w, torch.full_like(r_w, math.log((1 - eps) / eps)), atol=1e-3)
    assert torch.allclose(r_l, torch.full_like(r_l, math.log(eps / (1 - eps))), atol=1e-3)


def test_separable_matches_formula_and_eps0_limit():
    r_w = torch.tensor([0.3, -1.2, 2.0])
    r_l = torch.tensor([-0.5, 0.7, 1.5])
    eps = 0.2
    s = torch.sigmoid
    expected = (-((1 - eps) * torch.log(s(r_w)) + eps * torch.log(s(-r_w)))
                - (eps * torch.log(s(r_l)) + (1 - eps) * torch.log(s(-r_l)))).mean()
    loss, _ = separable_dph_loss(r_w, r_l, eps=eps)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss0, _ = separable_dph_loss(r_w, r_l, eps=0.0)
    assert torch.allclose(loss0, (-torch.log(s(r_w)) - torch.log(s(-r_l))).mean(), atol=1e-6)


# ---- Theorem 2: contrastive -----------------------------------------------------------------

@pytest.mark.parametrize("eps", EPSILONS)
def test_contrastive_gradient_vanishes_at_theorem2_margin(eps):
    star = math.log((1 - eps) / eps)
    # any offset: only the margin matters
    for offset in (-3.0, 0.0, 5.0):
        g_w, g_l = _grads(contrastive_dph_loss, [offset + star], [offset], eps=eps)
        assert abs(g_w.item()) < 1e-12 and abs(g_l.item()) < 1e-12
    g_w, _ = _grads(contrastive_dph_loss, [star + 1.0], [0.0], eps=eps)
    assert g_w.item() > 0


@pytest.mark.parametrize("eps", EPSILONS)
def test_contrastive_gradient_descent_converges_to_theorem2_margin(eps):
    torch.manual_seed(1)
    r_w, r_l = _descend(contrastive_dph_loss, torch.randn(8, dtype=torch.float64) * 3,
                        torch.randn(8, dtype=torch.float64) * 3, eps, lr=3.0)
    margin = r_w - r_l
    assert torch.allclose(margin, torch.full_like(margin, math.log((1 - eps) / eps)), atol=1e-3)


def test_contrastive_matches_formula_and_eps0_limit():
    r_w = torch.tensor([0.3, -1.2, 2.0])
    r_l = torch.tensor([-0.5, 0.7, 1.5])
    m = r_w - r_l
    s = torch.sigmoid
    loss, _ = contrastive_dph_loss(r_w, r_l, eps=0.3)
    assert torch.allclose(loss, (-0.7 * torch.log(s(m)) - 0.3 * torch.log(s(-m))).mean(), atol=1e-6)
    loss0, _ = contrastive_dph_loss(r_w, r_l, eps=0.0)
    assert torch.allclose(loss0, -torch.log(s(m)).mean(), atol=1e-6)


def test_dph_losses_are_stable_for_large_rewards():
    r_w = torch.tensor([200.0, -200.0], requires_grad=True)
    r_l = torch.tensor([-200.0, 200.0], requires_grad=True)
    for fn in (separable_dph_loss, contrastive_dph_loss):
        loss, _ = fn(r_w, r_l, eps=0.1)
        (g_w,) = torch.autograd.grad(loss, r_w)
        assert torch.isfinite(loss) and torch.isfinite(g_w).all()


def test_bf16_inputs_keep_gradient_and_dtype():
    r_w = torch.tensor([0.5, 1.0], dtype=torch.bfloat16, requires_grad=True)
    r_l = torch.tensor([0.0, 2.0], dtype=torch.bfloat16, requires_grad=True)
    loss, _ = separable_dph_loss(r_w, r_l)
    loss.backward()
    assert loss.dtype == torch.float32 and r_w.grad.dtype == torch.bfloat16


# ---- metrics, validation, registry ----------------------------------------------------------

def test_pair_metrics_hand_values():
    r_w = torch.tensor([1.0, 0.0, 2.0, -1.0])
    r_l = torch.tensor([0.0, 1.0, -1.0, -1.0])  # last pair tied: not counted as correct
    _, m = separable_dph_loss(r_w, r_l, eps=0.1)
    assert COMMON_KEYS <= set(m)
    assert m["pair_accuracy"] == pytest.approx(0.5)
    assert m["margin"] == pytest.approx((1 - 1 + 3 + 0) / 4)
    assert m["reward_chosen"] == pytest.approx(0.5)
    assert m["reward_rejected"] == pytest.approx(-0.25)
    # r_w > 0: 2 of 4; r_l < 0: 2 of 4
    assert m["sign_accuracy"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in m.values())


@pytest.mark.parametrize("eps", [-0.01, 0.51, 1.0])
def test_eps_out_of_range_rejected(eps):
    x = torch.zeros(2)
    for fn in (separable_dph_loss, contrastive_dph_loss):
        with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
            fn(x, x, eps=eps)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        cdpo_loss(x, x, x, x, eps=eps)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        separable_dph_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_loss_registry():
    assert get_loss("separable") is separable_dph_loss
    assert get_loss("contrastive") is contrastive_dph_loss
    assert losses.LOSSES.names() == ["contrastive", "listwise", "separable"]
    with pytest.raises(KeyError, match="separable"):
        get_loss("hinge")


def test_paper_constants():
    assert (PAPER_BETA, PAPER_CDPO_EPS, PAPER_DPH_EPS) == (0.6, 0.25, 0.1)


# ---- DPO / cDPO -----------------------------------------------------------------------------

LOGPS = dict(
    policy_logp_w=torch.tensor([-10.0, -4.0]),
    policy_logp_l=torch.tensor([-12.0, -3.0]),
    ref_logp_w=torch.tensor([-11.0, -5.0]),
    ref_logp_l=torch.tensor([-11.0, -5.0]),
)


def test_dpo_hand_computation():
    beta = 0.5
    # pair 1: chosen = 0.5*(−10+11) = 0.5, rejected = 0.5*(−12+11) = −0.5, logit 1.0
    # pair 2: chosen = 0.5*(−4+5) = 0.5, rejected = 0.5*(−3+5) = 1.0, logit −0.5
    # −log σ(x) = log(1 + e^−x)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    loss, m = dpo_loss(**LOGPS, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["reward_chosen"] == pytest.approx(0.5)
    assert m["reward_rejected"] == pytest.approx(0.25)
    assert m["dpo_accuracy"] == m["pair_accuracy"] == pytest.approx(0.5)
    assert m["dpo_margin"] == m["margin"] == pytest.approx(0.25)


def test_cdpo_eps0_equals_dpo():
    a, _ = cdpo_loss(**LOGPS, beta=0.6, eps=0.0)
    b, _ = dpo_loss(**LOGPS, beta=0.6)
    assert torch.allclose(a, b)


def test_cdpo_is_mixture_of_dpo_and_swapped_dpo():
    eps, beta = 0.25, 0.6
    swapped = dict(policy_logp_w=LOGPS["policy_logp_l"], policy_logp_l=LOGPS["policy_logp_w"],
                   ref_logp_w=LOGPS["ref_logp_l"], ref_logp_l=LOGPS["ref_logp_w"])
    fwd, _ = dpo_loss(**LOGPS, beta=beta)
    bwd, _ = dpo_loss(**swapped, beta=beta)
    c, _ = cdpo_loss(**LOGPS, beta=beta, eps=eps)
    assert c.item() == pytest.approx(((1 - eps) * fwd + eps * bwd).item(), rel=1e-6)
    # symmetry: cDPO(w, l; ε) == cDPO(l, w; 1 − ε) — checked through ε = 0.5, where both coincide
    h1, _ = cdpo_loss(**LOGPS, beta=beta, eps=0.5)
    h2, _ = cdpo_loss(**swapped, beta=beta, eps=0.5)
    assert torch.allclose(h1, h2)
    c_sw, _ = cdpo_loss(**swapped, beta=beta, eps=eps)
    assert c_sw.item() == pytest.approx(((1 - eps) * bwd + eps * fwd).item(), rel=1e-6)


def test_dpo_gradient_flows_to_policy_only():
    pw = LOGPS["policy_logp_w"].clone().requires_grad_(True)
    rw = LOGPS["ref_logp_w"].clone().requires_grad_(True)
    loss, _ = dpo_loss(pw, LOGPS["policy_logp_l"], rw, LOGPS["ref_logp_l"])
    loss.backward()
    assert pw.grad is not None and (pw.grad < 0).all()  # raising log π(y_w) lowers the loss
    assert rw.grad is None


def test_dpo_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(**LOGPS, beta=0.0)


# ---- joint ----------------------------------------------------------------------------------

def test_joint_loss_weights_and_prefixes():
    r_w, r_l = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    dph = separable_dph_loss(r_w, r_l)
    dpo = cdpo_loss(**LOGPS, beta=0.6, eps=0.25)
    loss, m = joint_loss(dph, dpo, alpha_dpo=2.0, alpha_dph=0.5)
    assert loss.item() == pytest.approx(2.0 * dpo[0].item() + 0.5 * dph[0].item(), rel=1e-6)
    assert m["loss"] == pytest.approx(loss.item())
    assert m["dph/pair_accuracy"] == pytest.approx(0.5)
    assert "dpo/dpo_accuracy" in m and "dph/loss" in m and "dpo/loss" in m
    # bare tensors work too
    loss2, m2 = joint_loss(dph[0], dpo[0])
    assert loss2.item() == pytest.approx(dph[0].item() + dpo[0].item(), rel=1e-6)
    assert set(m2) == {"loss", "dph/loss", "dpo/loss"}


def test_listwise_with_two_candidates_and_no_smoothing_is_the_contrastive_loss():
    r = torch.tensor([[1.0, 0.0], [0.2, 0.5], [-1.0, 3.0]])
    mask = torch.ones_like(r, dtype=torch.bool)
    lw, m = losses.listwise_dph_loss(r, mask, eps=0.0)
    ct, _ = contrastive_dph_loss(r[:, 0], r[:, 1], eps=0.0)
    assert torch.allclose(lw, ct) and m["choice_accuracy"] == pytest.approx(1 / 3)


def test_listwise_ignores_padded_candidates_and_a_per_question_offset():
    r = torch.tensor([[2.0, 1.0, 0.5, 99.0], [0.0, 1.0, -1.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    a, _ = losses.listwise_dph_loss(r, mask, eps=0.1)
    b, _ = losses.listwise_dph_loss(r + torch.tensor([[10.0], [-3.0]]), mask, eps=0.1)
    c, _ = losses.listwise_dph_loss(r.masked_fill(~mask, -7.0), mask, eps=0.1)
    assert torch.allclose(a, b) and torch.allclose(a, c)
    logp = torch.log_softmax(torch.tensor([2.0, 1.0, 0.5]), 0)
    row0 = -(0.9 * logp[0] + 0.1 * logp[1:].mean())
    logp1 = torch.log_softmax(r[1], 0)
    row1 = -(0.9 * logp1[0] + 0.1 * logp1[1:].mean())
    assert torch.allclose(a, (row0 + row1) / 2)
    with pytest.raises(ValueError, match="column 0"):
        losses.listwise_dph_loss(r, mask.roll(1, dims=1), eps=0.1)
