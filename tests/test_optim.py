"""Tests for prefheads.optim: prior regularization (PAPER.md section 3) and the lr schedule."""

import math

import pytest
import torch
from torch import nn

from prefheads.optim import PriorRegularizer, prior_param_groups, warmup_cosine_schedule


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(5, 3)
        self.proj = nn.Linear(3, 2)


def _perturb(module: nn.Module, amount: float = 1.0) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(amount)


def test_step_moves_halfway_to_reference():
    torch.manual_seed(0)
    model = Tiny()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    prior = PriorRegularizer(model, coefficient=0.5)
    _perturb(model, 2.0)
    prior.step(lr=1.0)  # lr·λ = 0.5
    for n, p in model.named_parameters():
        assert torch.allclose(p, start[n] + 1.0), n  # 2.0 away → 1.0 away


def test_step_formula_general_weight():
    p = nn.Parameter(torch.tensor([1.0, -3.0]))
    prior = PriorRegularizer([p], coefficient=0.2)
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, 1.0]))
    prior.step(lr=0.5)  # θ − 0.1·(θ − θ_ref)
    assert torch.allclose(p, torch.tensor([2.0 - 0.1 * 1.0, 1.0 - 0.1 * 4.0]))


def test_frozen_params_not_tracked_and_bad_weight_rejected():
    model = Tiny()
    model.embed_tokens.weight.requires_grad_(False)
    prior = PriorRegularizer(model.named_parameters())
    assert prior.names == ["proj.weight", "proj.bias"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prior.step(lr=3.0)  # 3·0.5 > 1 would overshoot
    with pytest.raises(ValueError):
        PriorRegularizer(model, coefficient=-1.0)


def test_param_groups_exclude_embeddings_and_leave_them_untouched():
    torch.manual_seed(0)
    model = Tiny()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups, prior = prior_param_groups(model, coefficient=0.5, exclude=("embed",), weight_decay=0.1)
    assert [g["name"] for g in groups] == ["prior", "no_prior"]
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.1
    assert groups[1]["params"] == [model.embed_tokens.weight]
    assert prior.names == ["proj.weight", "proj.bias"]
    _perturb(model, 2.0)
    prior.step(lr=1.0)
    assert torch.allclose(model.embed_tokens.weight, start["embed_tokens.weight"] + 2.0)
    assert torch.allclose(model.proj.weight, start["proj.weight"] + 1.0)
    # predicate form
    groups, prior = prior_param_groups(model, exclude=lambda n: n.endswith("bias"))
    assert prior.names == ["embed_tokens.weight", "proj.weight"]


def test_attached_to_sgd_decays_after_step_with_group_lr():
    p = nn.Parameter(torch.tensor([4.0]))
    q = nn.Parameter(torch.tensor([4.0]))
    prior = PriorRegularizer([p, q], coefficient=0.5)
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.2}])
    handle = prior.attach(opt)
    (p * 2.0 + q * 2.0).sum().backward()  # grad 2 on both
    opt.step()
    # p: SGD 4 − 1·2 = 2, then prior 2 − 1·0.5·(2 − 4) = 3
    # q: SGD 4 − 0.2·2 = 3.6, then prior 3.6 − 0.2·0.5·(3.6 − 4) = 3.64
    assert p.item() == pytest.approx(3.0)
    assert q.item() == pytest.approx(3.64)
    handle.remove()
    opt.step()  # grads unchanged; no prior any more
    assert p.item() == pytest.approx(1.0)


def test_attached_to_adamw_matches_manual_step():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 5, (4,))

    def loss_of(m):
        return m.proj(m.embed_tokens(x)).pow(2).sum()

    ga, prior_a = prior_param_groups(a, coefficient=0.5)
    opt_a = torch.optim.AdamW(ga, lr=0.1)
    prior_a.attach(opt_a)
    gb, prior_b = prior_param_groups(b, coefficient=0.5)
    opt_b = torch.optim.AdamW(gb, lr=0.1)
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_of(m).backward()
            opt.step()
        prior_b.step(lr=0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb)
    assert prior_a.sq_distance() > 0


def test_low_precision_reference_and_state_roundtrip():
    model = Tiny()
    prior = PriorRegularizer(model, ref_dtype=torch.bfloat16)
    assert all(r.dtype == torch.bfloat16 for r in prior.refs)
    _perturb(model, 1.0)
    prior.step(lr=1.0)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = prior.state_dict()
    other = PriorRegularizer(model)  # snapshots the perturbed weights
    other.load_state_dict(state)
    for r1, r2 in zip(prior.refs, other.refs):
        assert torch.equal(r1.float(), r2)


def _lrs(warmup, total, ratio, base=1.0, n=None):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = warmup_cosine_schedule(opt, warmup, total, ratio)
    out = []
    for _ in range(n or total + 3):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_warmup_then_cosine():
    lrs = _lrs(warmup=4, total=14, ratio=0.1, base=3e-6)
    assert lrs[0] == pytest.approx(3e-6 * 1 / 4)
    assert lrs[1] == pytest.approx(3e-6 * 2 / 4)
    assert lrs[3] == pytest.approx(3e-6)
    assert lrs[4] == pytest.approx(3e-6)  # cosine starts at the peak
    # halfway through the decay (t = 0.5): r + (1 − r)/2 = 0.55
    assert lrs[9] == pytest.approx(3e-6 * 0.55)
    # step 6: t = (6 − 4)/10 = 0.2 → 0.1 + 0.9·(1 + cos(0.2π))/2
    assert lrs[6] == pytest.approx(3e-6 * (0.1 + 0.9 * (1 + math.cos(math.pi * 0.2)) / 2))
    assert lrs[14] == pytest.approx(3e-7)  # 3e-6 → 3e-7 at the end
    assert lrs[16] == pytest.approx(3e-7)  # and stays there
    assert all(x >= y - 1e-18 for x, y in zip(lrs[4:], lrs[5:]))


def test_schedule_no_warmup_and_validation():
    lrs = _lrs(warmup=0, total=10, ratio=0.0)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        _lrs(warmup=11, total=10, ratio=0.0)
    with pytest.raises(ValueError):
        _lrs(warmup=0, total=10, ratio=1.5)
