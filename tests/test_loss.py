import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lit_vr1.loss import group_advantages, grpo_loss, k3_kl, sampling_logits, token_entropy, token_logprobs


def test_token_logprobs_equal_full_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    tokens = torch.randint(0, 11, (3, 5))
    direct = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens), direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 7, 0.6)])
def test_sampling_logits_match_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(1)
    logits = torch.randn(4, 50)
    ref = logits.clone()
    if temperature != 1.0:
        ref = TemperatureLogitsWarper(temperature)(None, ref)
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ours = sampling_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours.log_softmax(-1), ref.log_softmax(-1))


def test_sampling_logits_suppress_ids():
    out = sampling_logits(torch.zeros(2, 6), suppress_ids=(1, 4))
    assert torch.isinf(out[:, [1, 4]]).all() and torch.isfinite(out[:, [0, 2, 3, 5]]).all()


def test_token_entropy_uniform_and_masked():
    ent = token_entropy(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), float("-inf")]]]))
    torch.testing.assert_close(ent, torch.tensor([[math.log(4), math.log(2)]]))


def test_k3_kl_hand_computed():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    # r = log(0.25/0.5) = -log 2: exp(r) - r - 1 = 0.5 + log 2 - 1; r = 0 -> 0
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.5 + math.log(2) - 1.0, 0.0]))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_advantages_group_batch_none_and_tied():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    g = group_advantages(r, 4, "group", eps=0.0)
    s = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased
    torch.testing.assert_close(g.values[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    assert torch.equal(g.values[4:], torch.zeros(4))  # tied group: zero advantage, no nan
    assert g.tied.tolist() == [False, True]
    b = group_advantages(r, 4, "batch", eps=0.0)
    torch.testing.assert_close(b.values[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / r.std())
    n = group_advantages(r, 4, "none")
    torch.testing.assert_close(n.values, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))
    eps = group_advantages(torch.full((4,), 3.0), 4, "group")
    assert torch.equal(eps.values, torch.zeros(4))


def test_advantages_bad_inputs():
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, "sometimes")
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


# Two sequences: lengths 2 and 1 (mask), ratio 1 everywhere so per-token loss = -A.
LOGP = torch.zeros(2, 3)
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize(
    "loss_type,expected",
    [
        ("grpo", ((-1 - 1) / 2 + 2 / 1) / 2),  # per-seq means -1 and +2, averaged
        ("bnpo", (-1 - 1 + 2) / 3),  # token sum / 3 tokens
        ("dr_grpo", (-1 - 1 + 2) / (2 * 4)),  # token sum / (2 seqs * L=4)
        ("dapo", (-1 - 1 + 2) / 3),
    ],
)
def test_each_loss_type_hand_computed(loss_type, expected):
    loss, stats = grpo_loss(LOGP, LOGP, ADV, MASK, loss_type=loss_type, max_completion_length=4)
    assert loss.item() == pytest.approx(expected)
    assert stats.ratio_mean == 1.0 and stats.clip_low == 0.0 and stats.clip_high == 0.0


def test_loss_aggregation_with_unequal_lengths_differs():
    adv = torch.tensor([1.0, 1.0])
    g, _ = grpo_loss(LOGP, LOGP, adv, MASK, loss_type="grpo")
    b, _ = grpo_loss(LOGP, LOGP, adv, MASK, loss_type="bnpo")
    assert g.item() == pytest.approx(-1.0) and b.item() == pytest.approx(-1.0)
    adv = torch.tensor([1.0, 0.0])
    g, _ = grpo_loss(LOGP, LOGP, adv, MASK, loss_type="grpo")
    b, _ = grpo_loss(LOGP, LOGP, adv, MASK, loss_type="bnpo")
    assert g.item() == pytest.approx(-0.5) and b.item() == pytest.approx(-2 / 3)


def test_micro_batch_denominators_add_up():
    torch.manual_seed(0)
    logp, old = torch.randn(4, 5) * 0.1, torch.randn(4, 5) * 0.1
    adv = torch.randn(4)
    mask = (torch.rand(4, 5) > 0.3).float()
    mask[:, 0] = 1
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        full, _ = grpo_loss(logp, old, adv, mask, loss_type=lt, max_completion_length=5)
        parts = sum(
            grpo_loss(logp[s], old[s], adv[s], mask[s], loss_type=lt, max_completion_length=5,
                      num_sequences=4, num_tokens=float(mask.sum()))[0]
            for s in (slice(0, 1), slice(1, 4))
        )
        torch.testing.assert_close(parts, full)


def test_clipping_both_sides():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.05, 0.95]]))  # ratios
    mask = torch.ones(1, 4)
    # positive advantage: ratio 1.5 is clipped to 1.2 (no gradient), others unclipped
    lp = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(lp, old, torch.tensor([1.0]), mask, loss_type="bnpo", epsilon=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.05 + 0.95) / 4)
    assert stats.clip_high == 0.25 and stats.clip_low == 0.0
    loss.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] != 0
    # negative advantage: ratio 0.5 is clipped to 0.8 (no gradient); ratio 1.5 is not
    lp = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(lp, old, torch.tensor([-1.0]), mask, loss_type="bnpo", epsilon=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.05 + 0.95) / 4)
    assert stats.clip_low == 0.25 and stats.clip_high == 0.0
    loss.backward()
    assert lp.grad[0, 1] == 0 and lp.grad[0, 0] != 0
    # clip-higher: epsilon_high=0.6 leaves ratio 1.5 unclipped
    loss, stats = grpo_loss(logp, old, torch.tensor([1.0]), mask, loss_type="bnpo", epsilon=0.2, epsilon_high=0.6)
    assert loss.item() == pytest.approx(-(1.5 + 0.5 + 1.05 + 0.95) / 4) and stats.clip_high == 0.0


def test_kl_term_added_with_beta():
    logp = torch.zeros(1, 2)
    ref = torch.log(torch.tensor([[0.5, 1.0]]))
    kl = k3_kl(logp, ref)
    loss, stats = grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1, loss_type="bnpo")
    assert loss.item() == pytest.approx(0.1 * kl.mean().item())
    assert stats.kl == pytest.approx(kl.mean().item())
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        grpo_loss(LOGP, LOGP, ADV, MASK, loss_type="ppo")
