"""Numerics at real scale, proven on CPU: float32 master weights, float32 log-probs whatever
the model dtype, the scored distribution, no dropout in RL passes, unscored completions,
whole groups in mini-batches, the batch std over processes, DeepSpeed's gradient norm and
the key/value cache argument of the installed transformers.

The 2-process test runs this file as a script under torchrun (``python -m
torch.distributed.run --nproc_per_node=2 tests/test_numerics.py OUT``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# -- 1. float32 master weights ------------------------------------------------------------------
def test_fit_start_rules_refuse_half_precision_trained_weights_and_name_the_flags():
    from lit_vr1.checks import FitSetup, problems

    def found(**kw):
        return " ".join(problems(FitSetup(**kw)))

    bad = found(precision="bf16-true", dtype="bfloat16")
    assert bad.startswith("trainer.precision=bf16-true") and "trainer.precision=bf16-mixed and model.dtype=float32" in bad
    assert found(precision="bf16-mixed", dtype="bfloat16").startswith("model.dtype=bfloat16")
    assert "16-true" in found(precision="16-true", dtype="float32")
    # float32 masters: bf16 autocast over float32 weights; LoRA adapters (float32) over a bf16 base; DeepSpeed
    assert found(precision="bf16-mixed", dtype="float32") == ""
    assert found(precision="bf16-mixed", dtype="bfloat16", lora=True) == ""
    assert found(precision="bf16-true", dtype="bfloat16", deepspeed=True) == ""
    assert found(precision="32-true", dtype="bfloat16", deepspeed=True) != ""  # DeepSpeed's float32 mode: no masters
    # bf16-true casts LoRA adapters too
    assert found(precision="bf16-true", dtype="bfloat16", lora=True) != ""


@pytest.mark.parametrize("dtype,precision", [("bfloat16", "bf16-mixed"), ("float32", "bf16-true")])
def test_fit_refuses_bf16_trained_weights_under_a_plain_optimiser(samples, dtype, precision):
    """The recipes' old setting (bf16 weights, plain AdamW) trained without a word."""
    from helpers import LengthReward, fit

    from lit_vr1.checks import ConfigError
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], dtype=dtype,
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))
    with pytest.raises(ConfigError, match="trainer.precision=bf16-mixed and model.dtype=float32"):
        fit(module, samples[:2], max_steps=1, precision=precision)


def test_bf16_mixed_keeps_float32_weights_that_take_small_updates(samples):
    """bf16 compute (autocast on CPU), float32 weights: a 1e-6 AdamW step moves nearly every
    entry, where it would move ~2% of a bf16 weight's entries."""
    from helpers import LengthReward, fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, gradient_clip_val=None),
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-6, weight_decay=0.0))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    logger = fit(module, samples[:2], max_steps=1, precision="bf16-mixed")
    row = [m for _, m in logger.rows if "train/loss" in m][0]
    assert math.isfinite(row["train/loss"]) and row["train/grad_norm"] > 0
    w = dict(module.policy.named_parameters())["model.language_model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.float32
    moved = (w.detach() != before["model.language_model.layers.0.mlp.up_proj.weight"]).float().mean()
    assert moved > 0.9
    # the same update applied to a bf16 copy of the weight is mostly lost
    b16 = before["model.language_model.layers.0.mlp.up_proj.weight"].bfloat16()
    assert ((b16 + (w.detach() - before["model.language_model.layers.0.mlp.up_proj.weight"]).bfloat16()) != b16
            ).float().mean() < 0.5


# -- 2. float32 log-probs, ratio, KL and loss -----------------------------------------------------
def test_token_logprobs_are_float32_for_bf16_logits():
    from lit_vr1.loss import grpo_loss, token_logprobs

    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 300) * 4).bfloat16()
    tokens = torch.randint(0, 300, (2, 5))
    lp = token_logprobs(logits, tokens)
    assert lp.dtype == torch.float32
    exact = torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None])[..., 0]
    assert (lp.double() - exact).abs().max() < 1e-5  # float32 accuracy of the given (bf16) logits
    loss, _ = grpo_loss(lp.bfloat16(), lp.bfloat16(), torch.ones(2, dtype=torch.bfloat16), torch.ones(2, 5),
                        ref_logp=lp.bfloat16(), beta=0.1)
    assert loss.dtype == torch.float32


def test_k3_kl_keeps_its_digits_in_float32_near_the_reference():
    """exp(r) - r - 1 cancels to 0 in float32 for small r; lit-vr1's k3 keeps float32's digits."""
    from lit_vr1.loss import k3_kl

    r = torch.cat([torch.logspace(-6, 0, 60, dtype=torch.float64), -torch.logspace(-6, 0, 60, dtype=torch.float64)])
    r = r.float().double()  # exactly representable in float32
    want = torch.expm1(r) - r  # float64
    got = k3_kl(torch.zeros_like(r, dtype=torch.float32), r.float()).double()
    assert ((got - want).abs() / want).max() < 1e-5
    naive = (torch.exp(r.float()) - r.float() - 1.0).double()
    assert (naive[r.abs() < 1e-4] == 0).any()  # what the plain formula gives


def test_lm_head_runs_in_float32_under_bf16_autocast(tiny_qwen25, samples):
    from lit_vr1.generation import encode_prompts
    from lit_vr1.models.precision import Float32Head, float32_head

    model = copy.deepcopy(tiny_qwen25[0])
    keys = set(model.state_dict())
    inputs, _ = encode_prompts(tiny_qwen25[1], samples[:2])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(**inputs).logits.dtype == torch.bfloat16  # transformers' own head under autocast
        assert float32_head(model) and isinstance(model.lm_head, Float32Head)
        out = model(**inputs, output_hidden_states=True)
    assert out.logits.dtype == torch.float32 and set(model.state_dict()) == keys
    hidden = out.hidden_states[-1]
    torch.testing.assert_close(out.logits, hidden.float() @ model.lm_head.weight.float().T, rtol=0, atol=1e-5)


def test_small_drift_gives_a_nonzero_kl_on_every_token_under_bf16_autocast(samples):
    """A policy 1e-3 away from its reference: every token's k3 KL is above 0 (bf16 log-probs
    rounded it to exactly 0 on most tokens)."""
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.loss import k3_kl

    module = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(num_generations=2, max_completion_length=8))
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.policy.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
    rollout = module.loop.rollout(samples[:2])
    from lit_vr1.scoring import logprobs_in_parts

    parts = [torch.arange(len(rollout))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp = logprobs_in_parts(module.policy, rollout, parts)
        ref = logprobs_in_parts(module.ref_model, rollout, parts)
    assert logp.dtype == ref.dtype == torch.float32
    mask = rollout.completion_mask.bool()
    kl = k3_kl(logp, ref)[mask]
    assert (kl > 0).float().mean() > 0.99


def test_a_rollout_under_mixed_precision_turns_the_weight_cache_on_and_samples_the_same(tiny_qwen25, samples):
    """Lightning's bf16-mixed autocast has its weight cache off (a cast per weight per decoding
    step); the rollout turns it on, which changes no number."""
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import generate
    from lit_vr1.models.families import vision_token_ids
    from lit_vr1.models.precision import cached_autocast

    model, processor = tiny_qwen25
    cfg = SamplingConfig(max_completion_length=8, suppress_ids=vision_token_ids(processor))
    out = []
    for cached in (False, True):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            with cached_autocast("cpu") if cached else contextlib.nullcontext():
                out.append(generate(model, processor, samples[:2], 2, cfg).completion_ids)
                assert torch.is_autocast_cache_enabled() == cached
    assert torch.equal(out[0], out[1])
    with cached_autocast("cpu"):  # outside autocast: nothing happens
        assert not torch.is_autocast_enabled("cpu")


# -- 3. the scored distribution under top-k / top-p -------------------------------------------------
def test_top_k_sampling_is_scored_under_the_temperature_distribution(samples):
    """top_k=3: the loss, old and reference log-probs score the temperature-scaled logits,
    so KL is exactly 0 while the policy equals the reference, and no log-prob is -inf."""
    from helpers import LengthReward, fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    torch.manual_seed(0)
    cfg = GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, top_k=3, temperature=0.9,
                     num_iterations=2, gradient_clip_val=None)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    rows = [m for _, m in fit(module, samples[:2], max_steps=2).rows if "train/loss" in m]
    assert all(r["train/kl"] == 0.0 and r["train/ratio_mean"] == 1.0 and math.isfinite(r["train/loss"]) for r in rows)
    r = module.loop.last_rollout
    assert torch.isfinite(r.old_logprobs).all() and torch.isfinite(r.ref_logprobs).all()
    assert r.scoring.top_k == 0 and r.scoring.temperature == 0.9
    assert module.loop.sampling.top_k == 3  # sampling itself keeps the cut


def test_a_token_outside_the_recomputed_top_k_keeps_a_finite_log_prob():
    from lit_vr1.config import SamplingConfig
    from lit_vr1.loss import sampling_logits, token_logprobs

    def policy_logprobs(logits, tokens, cfg):
        return token_logprobs(sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.suppress_ids), tokens)

    logits = torch.tensor([[[3.0, 2.0, 1.0000, 0.9999, -1.0]]])
    sampled = torch.tensor([[2]])  # in the top 3 when sampled; a 2e-4 move puts it 4th
    moved = logits.clone()
    moved[0, 0, 2] -= 2e-4
    cfg = SamplingConfig(top_k=3)
    assert torch.isinf(policy_logprobs(moved, sampled, cfg)).all()  # scoring under the cut
    assert torch.isfinite(policy_logprobs(moved, sampled, cfg.scoring())).all()


# -- 4. dropout off ---------------------------------------------------------------------------------
@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_off_so_the_ratio_is_one_until_the_weights_move(samples, disable):
    """LoRA with its default dropout 0.05, trained adapters (B != 0), lr 0, two iterations."""
    from helpers import LengthReward, fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.models.lora import LoraSpec

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], lora=LoraSpec(r=4),
                        grpo=GRPOConfig(num_generations=4, max_completion_length=12, beta=0.0, num_iterations=2,
                                        disable_dropout=disable),
                        optimizer=lambda p: torch.optim.AdamW(p, lr=0.0))
    module.configure_model()
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rows = [m for _, m in fit(module, samples[:4], max_steps=2).rows if "train/loss" in m]
    ratios = [r["train/ratio_mean"] for r in rows]
    if disable:
        assert ratios == [1.0, 1.0]
        assert all(m.p == 0 for m in module.policy.modules() if isinstance(m, torch.nn.Dropout))
    else:
        assert any(abs(r - 1.0) > 1e-3 for r in ratios)


# -- 5. completions no reward could score ---------------------------------------------------------
def test_unscored_completions_stay_out_of_their_group_and_the_loss():
    from lit_vr1.loss import group_advantages
    from lit_vr1.rewards.base import Reward, SampleContext, score_all

    class Judge(Reward):  # fails on the completions that end with "!"
        default_name = "judge"

        def score(self, completions, contexts):
            if any(c.endswith("!") for c in completions):
                raise ConnectionError("judge down")
            return [float(len(c)) for c in completions]

    ctxs = [SampleContext(id=str(i), prompt="p", solution="") for i in range(4)]
    scores = score_all([Judge(on_error="nan")], ["aaaa", "b!", "cc", "d!"], ctxs)
    # every reward nan: a total of 0 that is not a score
    assert scores.unscored.tolist() == [False, True, False, True] and scores.total.tolist() == [4.0, 0.0, 2.0, 0.0]
    assert scores.stats()["reward/unscored"] == 2.0 and scores.stats()["reward/total/mean"] == 3.0
    adv = group_advantages(scores.total, 4, valid=~scores.unscored, eps=0.0)
    # the group of the two scored ones: 4 and 2, mean 3, std sqrt(2); before, the zeros joined the group
    torch.testing.assert_close(adv.values, torch.tensor([1.0, 0.0, -1.0, 0.0]) / math.sqrt(2))

    class Fmt(Reward):
        default_name = "fmt"

        def score(self, completions, contexts):
            return [0.5] * len(completions)

    # a completion another reward scored keeps the sum of the scores it got
    both = score_all([Judge(on_error="nan"), Fmt()], ["aaaa", "b!"], ctxs[:2])
    assert both.unscored.tolist() == [False, False] and both.total.tolist() == [4.5, 0.5]


def test_group_advantages_with_valid_mask_matches_the_plain_formula_on_the_valid_rows():
    from lit_vr1.loss import group_advantages

    torch.manual_seed(0)
    r = torch.randn(12)
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], dtype=torch.bool)
    adv = group_advantages(r, 4, "group", eps=0.0, valid=valid)
    for g in range(3):
        v = valid[4 * g:4 * g + 4]
        x = r[4 * g:4 * g + 4]
        if v.sum() < 2:
            assert (adv.values[4 * g:4 * g + 4] == 0).all() and adv.tied[g]
            continue
        want = (x[v] - x[v].mean()) / x[v].std()
        torch.testing.assert_close(adv.values[4 * g:4 * g + 4][v], want)
        assert (adv.values[4 * g:4 * g + 4][~v] == 0).all()
    all_valid = group_advantages(r, 4, "batch", eps=0.0)
    torch.testing.assert_close(all_valid.values, (r - r.view(3, 4).mean(1).repeat_interleave(4)) / r.std())


def test_the_loop_gives_unscored_completions_no_advantage_and_no_loss(samples):
    from helpers import fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.base import Reward

    class EveryThirdFails(Reward):
        default_name = "flaky"
        rescore_singly = False

        def score(self, completions, contexts):
            return [math.nan if i % 3 == 0 else len(c) / 10 for i, c in enumerate(completions)]

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[EveryThirdFails()],
                        grpo=GRPOConfig(num_generations=4, max_completion_length=8, beta=0.0))
    rows = [m for _, m in fit(module, samples[:2], max_steps=1).rows if "train/loss" in m]
    assert rows[0]["train/reward/unscored"] == 3.0  # completions 0, 3, 6 of 8
    adv = module.loop.last_rollout.advantages
    assert adv[[0, 3, 6]].tolist() == [0.0, 0.0, 0.0]


# -- 6. whole groups in mini-batches ---------------------------------------------------------------
def test_mini_batches_hold_whole_groups_so_each_micro_batch_runs_one_prompt(samples, monkeypatch):
    """P=4, G=8, mini 16, micro 4: 8 micro-batches of one prompt each per pass (shuffled single
    completions needed about 20 prompt passes)."""
    from helpers import LengthReward, fit

    from lit_vr1 import shared_prompt
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    prompt_rows = []
    original = shared_prompt.prompt_pass

    def counting(model, prompt, features=None, cache=None):
        if torch.is_grad_enabled():
            prompt_rows.append(int(prompt["input_ids"].shape[0]))
        return original(model, prompt, features, cache)

    monkeypatch.setattr(shared_prompt, "prompt_pass", counting)
    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=8, max_completion_length=4, beta=0.0, mini_batch_size=16,
                                        micro_batch_size=4))
    fit(module, samples[:4], max_steps=2, batch_size=4)
    assert prompt_rows == [1] * 8  # the policy passes of the two steps


def test_group_order_keeps_groups_whole():
    from lit_vr1.loop import group_order

    order = group_order(12, 4, torch.Generator().manual_seed(3))
    assert sorted(order.tolist()) == list(range(12))
    groups = order.view(3, 4)
    assert all(g.tolist() == list(range(int(g[0]), int(g[0]) + 4)) and int(g[0]) % 4 == 0 for g in groups)
    assert group_order(8, 4, None).tolist() == list(range(8))


# -- 7. the batch std over every process (2 CPU processes, gloo) --------------------------------------
def _rank_main(out: Path) -> None:
    import torch.distributed as dist

    from lit_vr1.loop import rollout_advantages
    from lit_vr1.rewards.base import RewardScores

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    total = torch.randn(8) * (1 + 3 * rank)  # the processes' spreads differ a lot
    unscored = torch.zeros(8, dtype=torch.bool)
    unscored[rank] = True
    scores = RewardScores(names=["r"], per_reward=total[None], total=total, unscored=unscored)

    def reduce_sum(t):
        dist.all_reduce(t)
        return t

    adv = rollout_advantages(scores, 4, "batch", reduce_sum)
    (out / f"rank{rank}.json").write_text(json.dumps({"total": total.tolist(), "unscored": unscored.tolist(),
                                                      "adv": adv.values.tolist()}))
    dist.destroy_process_group()


def test_batch_scaled_advantages_divide_by_the_std_of_every_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    every = torch.tensor([t for r in ranks for t, u in zip(r["total"], r["unscored"]) if not u])
    std = every.std()
    for r in ranks:
        total, unscored = torch.tensor(r["total"]), torch.tensor(r["unscored"])
        for g in range(2):
            sl = slice(4 * g, 4 * g + 4)
            keep = ~unscored[sl]
            want = (total[sl][keep] - total[sl][keep].mean()) / (std + 1e-4)
            torch.testing.assert_close(torch.tensor(r["adv"])[sl][keep], want, rtol=1e-5, atol=1e-6)


# -- 8. DeepSpeed owns the gradients: the norm comes from its engine -------------------------------------
def test_under_deepspeed_the_norm_and_the_skips_come_from_the_engine(samples, monkeypatch):
    """DeepSpeed holds the gradients (p.grad is None there): the logged norm is the engine's, and
    a step the engine did not apply (non-finite gradients) is counted as skipped; the LR
    scheduler steps only with applied steps."""
    from helpers import LengthReward, fit

    from lit_vr1 import parallel
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    class Engine:  # what Lightning's DeepSpeedStrategy holds as strategy.model
        def __init__(self):
            self.steps = iter([(2.5, True), (2.5, False), (1.5, True)])  # (norm it reports, step applied)

        def get_global_grad_norm(self):
            return self.current[0]

        def was_step_applied(self):
            return self.current[1]

    engine = Engine()
    monkeypatch.setattr(parallel, "deepspeed_engine", lambda module: engine)
    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=4, max_completion_length=6, beta=0.0, gradient_clip_val=None))
    module.scheduler_factory = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    real_update = module.apply_update

    def update(loss, max_norm, has_tokens=True):
        engine.current = next(engine.steps)
        return real_update(loss, max_norm, has_tokens)

    module.apply_update = update
    rows = [m for _, m in fit(module, samples[:2], max_steps=3).rows if "train/loss" in m]
    assert [r["train/grad_norm"] for r in rows] == [2.5, 2.5, 1.5]
    assert [r["train/skipped_steps"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["train/lr"] for r in rows] == pytest.approx([1e-5 / 2, 1e-5 / 2, 1e-5 / 3])


def test_a_mini_batch_with_nothing_scored_takes_no_step(samples):
    """A judge that is down under on_error: nan: no loss token anywhere, so no optimiser step
    (AdamW's momentum would otherwise keep moving the weights with no signal)."""
    from helpers import fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.base import Reward

    class Down(Reward):
        default_name = "judge"

        def score(self, completions, contexts):
            raise ConnectionError("judge down")

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[Down(on_error="nan")],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.04))
    module.configure_model()
    before = copy.deepcopy(module.policy.state_dict())
    with pytest.raises(FloatingPointError, match="counts in the loss on any process.*a judge server that is down"):
        fit(module, samples[:2], max_steps=1)  # every rollout unscored: 10 skips in a row stop the fit
    assert module.skipped_steps == 10 and module.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


# -- bit-identical reruns: the shared prompt's cache rows ---------------------------------------------
def test_gradients_through_a_shared_prompt_are_bit_identical_run_after_run(tiny_qwen25, samples):
    """One prompt's cache repeated for its G=8 completions: the backward sums the 8 copies'
    gradients. transformers' keys[index] summed them from two threads in a varying order
    (72 of 72 trainable tensors differed between 9 repeats); index_select sums in order."""
    from lit_vr1 import shared_prompt
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import generate
    from lit_vr1.models.families import vision_token_ids

    model = copy.deepcopy(tiny_qwen25[0])
    processor = tiny_qwen25[1]
    torch.manual_seed(0)
    r = generate(model.eval(), processor, samples[:2], 8,
                 SamplingConfig(max_completion_length=24, suppress_ids=vision_token_ids(processor)))
    model.train()
    rows = torch.arange(8)  # the first prompt's group

    def grads():
        model.zero_grad()
        logits = shared_prompt.completion_logits(model, r, rows)
        logits.float().square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    first = grads()
    for _ in range(6):
        assert all(torch.equal(a, b) for a, b in zip(first, grads()))


# -- 9. the key/value cache argument of the installed transformers -------------------------------------
def test_shared_prompt_passes_use_the_current_cache_argument(tiny_qwen25, samples):
    """transformers 5.2x deprecates ``past_key_values`` (removed in 5.40) for ``cache``."""
    from lit_vr1 import shared_prompt
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import encode_prompts, image_layout
    from lit_vr1.rollout import Rollout

    model, processor = tiny_qwen25
    prompt, per_prompt = encode_prompts(processor, samples[:2])
    image_rows, _ = image_layout(processor, prompt, [s for x in samples[:2] for s in x.image_sizes])
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.no_grad():
            s = shared_prompt.sample(model, prompt, 2, SamplingConfig(max_completion_length=4), eos,
                                     processor.tokenizer.pad_token_id)
            r = Rollout(prompt, per_prompt, s.completion_ids, s.mask, ~s.has_eos, [], [], SamplingConfig(),
                        group_size=2, image_rows=image_rows, shared_prompt=True)
            shared_prompt.completion_logits(model, r, torch.arange(4))


# -- on a GPU (benchmarks/gpu_check.sh runs these with pytest -m cuda) ----------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grpo_on_cuda_under_bf16_mixed_keeps_float32_weights_logits_and_logprobs(samples):
    from helpers import LengthReward, fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, num_iterations=2))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    rows = [m for _, m in fit(module, samples[:2], max_steps=2, precision="bf16-mixed", accelerator="gpu").rows
            if "train/loss" in m]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows) and rows[0]["train/ratio_mean"] == 1.0
    r = module.loop.last_rollout
    assert r.completion_ids.is_cuda and r.old_logprobs.dtype == r.ref_logprobs.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in module.policy.parameters())
    assert any(not torch.equal(p.detach().cpu(), before[n].cpu()) for n, p in module.policy.named_parameters())
    module.policy.cuda()  # Lightning's teardown moved the module back to the CPU at the end of fit
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = module.policy(**{k: v for k, v in r.model_inputs(torch.arange(2)).items()}).logits
    assert logits.dtype == torch.float32


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
