from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.curriculum import PACING, SCORERS, CurriculumSampler
from distill.errors import DistillError
from distill.losses import LOSSES, LossInputs, combine


def inputs(s, t, labels, T=2.0, **kw):
    return LossInputs(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                      torch.tensor(labels), T, **kw)


def test_kl_is_zero_for_equal_logits_and_scaled_by_t_squared():
    x = inputs([[1.0, 2.0]], [[1.0, 2.0]], [-100])
    assert LOSSES.get("kl")(x).item() == pytest.approx(0.0, abs=1e-7)
    s, t = [[0.0, 1.0]], [[2.0, -1.0]]
    for T in (1.0, 4.0):
        p = torch.softmax(torch.tensor(t) / T, -1)
        q = torch.log_softmax(torch.tensor(s) / T, -1)
        manual = (p * (p.log() - q)).sum() * T * T
        assert LOSSES.get("kl")(inputs(s, t, [-100], T)).item() == pytest.approx(manual.item(), rel=1e-5)


def test_ce_uses_only_gold_labels_and_says_nothing_without_them():
    x = inputs([[2.0, 0.0], [0.0, 2.0]], [[0, 0], [0, 0]], [0, -100])
    per = LOSSES.get("ce")(x)
    assert per[1].item() == 0.0 and per[0].item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    assert LOSSES.get("ce")(inputs([[1.0, 0.0]], [[0, 0]], [-100])) is None
    total, parts = combine({"kl": 0.5, "ce": 0.5}, x)
    assert set(parts) == {"kl", "ce"}
    # ce averages over labelled rows only
    assert parts["ce"] == pytest.approx(per[0].item(), rel=1e-5)


def test_weighted_sum_and_example_weights():
    x = inputs([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]], [-100, -100])
    per = LOSSES.get("mse")(x)
    total, _ = combine({"mse": 2.0}, x)
    assert total.item() == pytest.approx(2 * per.mean().item())
    total_w, _ = combine({"mse": 1.0}, x, torch.tensor([1.0, 0.0]))
    assert total_w.item() == pytest.approx(per[0].item())


def test_hidden_losses_with_a_projection_between_widths():
    proj = torch.nn.ModuleList([torch.nn.Linear(4, 6)])
    s_h, t_h = [torch.randn(3, 4)], [torch.randn(3, 6)]
    x = inputs([[0.0, 1.0]] * 3, [[0.0, 1.0]] * 3, [-100] * 3, student_hidden=s_h, teacher_hidden=t_h, projections=proj)
    loss, _ = combine({"hidden_mse": 1.0, "hidden_cos": 1.0}, x)
    loss.backward()
    assert proj[0].weight.grad is not None and loss.item() > 0
    same = inputs([[0.0, 1.0]], [[0.0, 1.0]], [-100], student_hidden=[torch.ones(1, 6)], teacher_hidden=[torch.ones(1, 6)])
    assert LOSSES.get("hidden_cos")(same).item() == pytest.approx(0.0, abs=1e-6)


def test_failed_lookups_list_the_valid_names():
    with pytest.raises(DistillError, match="Did you mean 'kl'.*Valid: kl, ce, mse, hidden_mse, hidden_cos"):
        LOSSES.get("kll")
    with pytest.raises(DistillError, match="linear, root, step"):
        PACING.get("exp")
    with pytest.raises(DistillError, match="margin"):
        SCORERS.get("margn")


def test_scorers_rank_confident_examples_easy():
    logits = np.array([[5.0, -5.0], [0.1, 0.0], [2.0, 0.0]])
    for name in ("margin", "entropy"):
        order = np.argsort(SCORERS.get(name)(logits, [1, 1, 1]))
        assert order.tolist() == [0, 2, 1], name
    assert np.argsort(SCORERS.get("length")(logits, [30, 5, 10])).tolist() == [1, 2, 0]


def test_pacing_functions_start_at_start_and_reach_everything_at_ramp():
    for name in ("linear", "root", "step"):
        fn = PACING.get(name)
        assert fn(0.0, 0.3, 0.5) == pytest.approx(0.3)
        assert fn(0.5, 0.3, 0.5) == pytest.approx(1.0)
        assert fn(0.9, 0.3, 0.5) == pytest.approx(1.0)
    assert PACING.get("root")(0.125, 0.0, 0.5) == pytest.approx(0.5)
    assert PACING.get("linear")(0.125, 0.0, 0.5) == pytest.approx(0.25)
    assert PACING.get("step")(0.2, 0.0, 0.5) == pytest.approx(0.25)


def test_sampler_draws_early_batches_from_the_easiest_share_only():
    n, bs = 100, 10
    scores = np.arange(n)[::-1].astype(float)  # index 99 is the easiest
    sampler = CurriculumSampler(scores, bs, epochs=2, pacing="linear", start=0.2, ramp=0.5, seed=0)
    first = list(sampler)
    assert len(first) == n and len(set(first[:bs])) == bs
    assert all(i >= 80 for i in first[:bs])  # the easiest 20%
    second = list(sampler)
    assert sampler.pool_sizes[0] == 20 and sampler.pool_sizes[-1] == 100
    assert min(second) < 20 and len(set(second)) > 50  # after the ramp the hardest examples are in play
    again = CurriculumSampler(scores, bs, 2, "linear", 0.2, 0.5, seed=0)
    assert list(again) == first
