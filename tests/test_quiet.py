"""Lightning's notices that do not apply to lit-vr1 are silenced for a lit-vr1 run from Python
only while it runs (setup to teardown): a notebook's other models keep them."""

import warnings

import torch
from helpers import LengthReward
from lightning.pytorch import LightningModule, Trainer

from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.grpo import GRPOModule
from lit_vr1.quiet import NOTICES


class OtherModel(LightningModule):
    """A notebook's other model, with a submodule left in eval mode by mistake."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.frozen = torch.nn.Linear(2, 2).eval()

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def lit_filters() -> list:
    return [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].pattern in NOTICES]


def test_notices_are_silenced_during_a_lit_vr1_fit_and_back_after_it(tmp_path):
    from lit_vr1.quiet import quiet_known_notices

    with warnings.catch_warnings():  # the command's filters, installed then restored away (pytest does so per test)
        quiet_known_notices()
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.04))
    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, max_shapes=1),
                               synthetic_dir=str(tmp_path / "data"), batch_size=2, num_val_samples=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = lit_filters()
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path).fit(module, data)
        assert lit_filters() == before == []  # taken out at teardown
        assert not [w for w in caught if "module(s) in eval mode" in str(w.message)]  # the reference is eval on purpose
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path).fit(OtherModel(), loader)
    assert [w for w in caught if "module(s) in eval mode" in str(w.message)]  # the other model's mistake is shown


def test_the_sync_dist_notice_is_silenced_for_evaluation_figures_only():
    """Under several processes every validation said it once per figure; the figures come from
    torchmetrics metrics that gather every process's rows first. A user's own figure keeps it."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    from lit_vr1.quiet import add_notice_filters, remove_notice_filters

    def notice(name):
        return (f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)` when logging on epoch level in "
                "distributed setting to accumulate the metric across devices.")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        added = add_notice_filters()
        for name in ("val/acc50", "test/map_50", "my_loss", "val/my_metric"):
            warnings.warn(notice(name), PossibleUserWarning, stacklevel=1)
        remove_notice_filters(added)
    assert [str(w.message) for w in caught] == [notice("my_loss"), notice("val/my_metric")]
