"""GRPO under ``16-mixed``: float16 autocast with Lightning's loss scaler (``lit_vr1.loss_scale``).

On a GPU ``trainer.precision: 16-mixed`` gives Lightning's ``MixedPrecision`` plugin a
``GradScaler``; on the CPU Lightning turns ``16-mixed`` into bf16, so these tests hand the
Trainer the same plugin with torch's CPU ``GradScaler``: the module meets the same scaled
gradients as on a GPU. Before 2026-12-06 the gradient norm was read and clipped while the
gradients still carried the scale (65536): logged about 2e5 for a true 3, every update clipped
to 1/65536 of ``gradient_clip_val``; and an overflow was skipped without lowering the scale, so
the fit stopped after ten as diverged.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch


def _fit(samples, plugin_scale: float | None, max_steps: int, clip: float | None = 0.5, poison: bool = False,
         nan_loss: bool = False, fused: bool = False):
    """A tiny GRPO fit; ``plugin_scale``: float16 autocast with a loss scaler starting there,
    None for float32. ``poison``: every gradient of the first decoder layer's weights is nan;
    ``nan_loss``: the loss each update reports is nan too (a float16 forward that overflowed)."""
    from helpers import LengthReward, fit
    from lightning.pytorch.plugins.precision import MixedPrecision

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    start: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            start.update({k: v.detach().clone() for k, v in pl_module.policy.named_parameters()})
            if poison:
                for p in pl_module.policy.model.language_model.layers[0].parameters():
                    p.register_hook(lambda g: torch.full_like(g, float("nan")))
            if nan_loss:
                update = pl_module.apply_update
                pl_module.apply_update = lambda loss, *args, **kwargs: update(float("nan"), *args, **kwargs)

    torch.manual_seed(0)
    cfg = GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, gradient_clip_val=clip)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg,
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, fused=fused or None))
    kwargs: dict = {"callbacks": [Snapshot()]}
    if plugin_scale is not None:
        kwargs["plugins"] = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=plugin_scale))]
    logger = fit(module, samples[:2], max_steps=max_steps, **kwargs)
    rows = [m for _, m in logger.rows if "train/loss" in m]
    moved = {k: v.detach() - start[k] for k, v in module.policy.named_parameters()}
    return module, rows, moved


def test_16_mixed_logs_and_clips_the_true_gradient_norm(samples):
    _, plain_rows, plain_moved = _fit(samples, None, max_steps=3)
    module, rows, moved = _fit(samples, 65536.0, max_steps=3)
    assert module.trainer.precision_plugin.scaler.get_scale() == 65536.0  # no overflow: nothing skipped
    assert [r["train/skipped_steps"] for r in rows] == [0.0, 0.0, 0.0]
    for plain, scaled in zip(plain_rows, rows):  # the true norm (about 2-3), not 65536 times it
        assert plain["train/grad_norm"] > 0.5  # clipping at 0.5 binds on every step
        assert scaled["train/grad_norm"] == pytest.approx(plain["train/grad_norm"], rel=1e-2)
    flat = torch.cat([d.flatten() for d in moved.values()])
    plain_flat = torch.cat([d.flatten() for d in plain_moved.values()])
    # float16 compute rounds otherwise, the update is the float32 one (clipped at 1/65536 of it: about 1/3 of its size)
    assert float(flat.norm()) == pytest.approx(float(plain_flat.norm()), rel=1e-2)
    assert torch.nn.functional.cosine_similarity(flat, plain_flat, dim=0) > 0.999


def test_a_float16_overflow_lowers_the_loss_scale_and_the_fit_goes_on(samples, caplog, monkeypatch):
    from lit_vr1.grpo import GRPOModule

    monkeypatch.setattr(GRPOModule, "max_skips_in_a_row", 3)  # overflows above scale 1 do not count toward it
    caplog.set_level("INFO")
    module, rows, moved = _fit(samples, 2.0 ** 24, max_steps=2)
    scale = module.trainer.precision_plugin.scaler.get_scale()
    skipped = rows[-1]["train/skipped_steps"]
    assert 3 <= skipped and scale == 2.0 ** 24 / 2 ** skipped  # halved once per overflow, more than 3 in a row here
    assert module.global_step == 2  # counts applied steps only
    assert sum(float(d.abs().sum()) for d in moved.values()) > 0
    assert "float16 gradients overflowed at loss scale 1.67772e+07" in caplog.text


def test_gradients_not_finite_at_a_scale_of_one_stop_the_fit_as_diverged(samples, monkeypatch):
    from lit_vr1.grpo import GRPOModule

    monkeypatch.setattr(GRPOModule, "max_skips_in_a_row", 3)
    with pytest.raises(FloatingPointError, match=r"3 optimiser steps in a row were skipped .*overflowed at loss "
                                                 r"scale 0.25 .*Training has diverged"):
        _fit(samples, 2.0, max_steps=2, poison=True)  # 2 -> 1 not counted, then 1, 0.5 and 0.25 counted


def test_a_nan_loss_is_a_plain_skip_that_leaves_the_scale_alone(samples, monkeypatch):
    """A float16 forward that overflowed gives a nan loss, which no loss scale mends: it was taken for a
    gradient overflow, the scale halved down to 2**-10 and the stop came after 26 rollouts, not 10 (helper-68)."""
    from lit_vr1.grpo import GRPOModule

    monkeypatch.setattr(GRPOModule, "max_skips_in_a_row", 3)
    with pytest.raises(FloatingPointError, match=r"3 optimiser steps in a row were skipped .*loss nan, gradient norm "
                                                 r"nan: not finite on every process.*Training has diverged") as err:
        _fit(samples, 4.0, max_steps=2, poison=True, nan_loss=True)  # at scale 4: each counted from the first
    assert "overflowed" not in str(err.value)


def test_a_fused_optimiser_clips_under_the_loss_scaler(samples):
    """Lightning's clip refuses a fused optimiser under the scaler ("does not allow for gradient clipping");
    clipping the scaled gradients at max_norm x scale needs no unscaling first."""
    _, plain_rows, _ = _fit(samples, None, max_steps=2, fused=True)
    module, rows, _ = _fit(samples, 65536.0, max_steps=2, fused=True)
    assert module.trainer.optimizers[0].defaults["fused"] is True
    for plain, scaled in zip(plain_rows, rows):
        assert scaled["train/grad_norm"] == pytest.approx(plain["train/grad_norm"], rel=1e-2)
