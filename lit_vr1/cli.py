"""The ``lit-vr1`` command: a LightningCLI with fit, validate, test and predict.

    lit-vr1 fit --config configs/quickstart.yaml
    lit-vr1 fit --config configs/quickstart.yaml --model.grpo.num_generations=8 --trainer.max_steps=100

Models, data modules, rewards, optimisers, schedulers, loggers, callbacks and
strategies are all chosen with ``class_path`` / ``init_args`` in YAML.

Checkpoints are written atomically (:class:`~lit_vr1.checkpoint.AtomicCheckpointIO`), so a
run killed at any moment resumes from its last complete checkpoint:

    lit-vr1 fit --config configs/quickstart.yaml --ckpt_path last
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from lit_vr1.checkpoint import use_atomic_checkpoints


class LitVR1CLI(LightningCLI):
    """LightningCLI for any lit-vr1 module and data module (``class_path`` in the config)."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs):
        """The Trainer, its single-file checkpoints made atomic (see ``use_atomic_checkpoints``)."""
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer


def main(args: list[str] | None = None) -> None:
    LitVR1CLI(args=args)


if __name__ == "__main__":
    main()
