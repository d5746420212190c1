"""RecommenderModule's training step keeps off the host: a non-finite loss is found once per
epoch, from the epoch's summed losses, and stops the fit there."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from egra.data.datamodule import RecDataModule
from egra.models import LightGCN
from egra.training.module import RecommenderModule


class NanOnce(LightGCN):
    """LightGCN whose second loss is NaN by a constant term (the gradients stay finite)."""

    calls = 0

    def loss(self, users, pos, neg):
        out = super().loss(users, pos, neg)
        NanOnce.calls += 1
        if NanOnce.calls == 2:
            out["loss"] = out["loss"] + torch.tensor(float("nan"))
        return out


def test_a_nan_loss_stops_the_fit_at_the_end_of_its_epoch(tmp_path, one_thread):
    dm = RecDataModule(root=str(tmp_path / "data"), preset="tiny", batch_size=128)
    dm.setup()
    module = RecommenderModule(NanOnce(**dm.model_inputs(), embedding_dim=8), optimizer=torch.optim.Adam)
    steps = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(batch_idx)

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[Count()],
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(.*train/loss.*\) in epoch 0"):
        trainer.fit(module, datamodule=dm)
    assert len(steps) > 2 and steps == list(range(len(steps)))  # the epoch ran to its end, no further
