"""DDP under Lightning's real launcher (``strategy="ddp"`` re-runs the script per rank), 2 gloo ranks.

The script runs in a subprocess (the launcher re-executes ``sys.argv``, which must not be
pytest's) and each rank writes what it saw; the test checks the single-device protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from egra.data.datamodule import RecDataModule
    from egra.models import LightGCN
    from egra.training.module import RecommenderModule

    out_dir, batch_size = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    L.seed_everything(0)
    dm = RecDataModule(root=out_dir + "/data", preset="tiny", batch_size=batch_size)
    dm.setup()
    net = LightGCN(**dm.model_inputs(), embedding_dim=16)
    module = RecommenderModule(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))

    class Record(L.Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batches.append(batch[:2].tolist())

        def on_train_epoch_end(self, trainer, pl_module):
            # Runs before the module's hook: these are this rank's own sums.
            self.local = {k: float(v) for k, v in pl_module._train_sums.items()}
            self.rows = pl_module._train_rows

    rec = Record()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, callbacks=[rec],
    )
    trainer.fit(module, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    u, i = dm.data.pairs(0)
    record = {"batches": rec.batches, "local": rec.local, "rows": rec.rows, "logged": logged,
              "train": [u.tolist(), i.tolist()]}
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(record, f)
    """
)


@pytest.mark.slow
def test_ddp_epoch_uses_each_triple_once_and_logs_rank_means(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    env["OMP_NUM_THREADS"] = "1"
    batch_size = 301  # not a multiple of 2: the ranks' shares differ by a row
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(batch_size)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    train = sorted(zip(*ranks[0]["train"]))
    n_steps = -(-len(train) // batch_size)
    # The single-device epoch: same steps, each step's global batch split into shares.
    assert [len(r["batches"]) for r in ranks] == [n_steps, n_steps]
    for step in range(n_steps):
        sizes = [len(r["batches"][step][0]) for r in ranks]
        assert sum(sizes) == min(batch_size, len(train) - step * batch_size)
        assert max(sizes) - min(sizes) <= 1
    seen = sorted((u, i) for r in ranks for b in r["batches"] for u, i in zip(*b))
    assert seen == train  # every training triple exactly once across ranks
    # Logged epoch losses are row-weighted means over both ranks, not rank 0's alone.
    rows = sum(r["rows"] for r in ranks)
    for key in ("train/loss", "train/loss_bpr", "train/loss_reg"):
        mean = sum(r["local"][key] for r in ranks) / rows
        assert ranks[0]["logged"][key] == pytest.approx(mean, rel=1e-5)
        assert ranks[1]["logged"][key] == pytest.approx(mean, rel=1e-5)
    local = [r["local"]["train/loss"] / r["rows"] for r in ranks]
    assert not np.isclose(local[0], local[1], rtol=1e-6)  # the test can tell rank 0 from the mean


BUFFER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from egra.data.datamodule import RecDataModule
    from egra.graphs import modality_graphs
    from egra.metrics import popularity_groups
    from egra.models import MGCN
    from egra.training.module import RecommenderModule

    out_dir = sys.argv[1]
    torch.set_num_threads(1)
    syncs = {"n": 0}
    real_sync = DistributedDataParallel._sync_buffers

    def counted(self, *args, **kwargs):  # DDP's rank-0 buffer broadcast before a forward
        syncs["n"] += 1
        return real_sync(self, *args, **kwargs)

    DistributedDataParallel._sync_buffers = counted
    dm = RecDataModule(root=out_dir + "/data", preset="tiny", batch_size=256)
    dm.setup()
    inputs = dm.model_inputs()
    graphs = modality_graphs(inputs["features"], 5, device="cpu")

    class Seen(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            ddp = trainer.strategy.model
            self.record = {"ddp": isinstance(ddp, DistributedDataParallel),
                           "buffers": [n for n, _ in ddp.named_buffers()],
                           "will_sync": bool(ddp.will_sync_module_buffers())}

    def fit(extra_buffer):
        L.seed_everything(0)
        net = MGCN(**inputs, modality_graphs=graphs, embedding_dim=8, train_features=False)
        if extra_buffer:  # the control: what a frozen table registered as a buffer costs
            net.register_buffer("frozen", torch.zeros(3), persistent=False)
        groups = torch.as_tensor(popularity_groups(dm.data.item_train_counts(), 3))
        module = RecommenderModule(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                                   item_groups=groups)
        seen = Seen()
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=3,
            limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False, callbacks=[seen],
        )
        syncs["n"] = 0
        trainer.fit(module, datamodule=dm)
        return {**seen.record, "syncs": syncs["n"], "groups_device": str(module.item_groups.device)}, trainer

    ours, trainer = fit(extra_buffer=False)
    control, _ = fit(extra_buffer=True)
    with open(f"{out_dir}/buffers{trainer.global_rank}.json", "w") as f:
        json.dump({"ours": ours, "control": control}, f)
    """
)


@pytest.mark.slow
def test_ddp_broadcasts_no_buffers_each_step(tmp_path):
    """Under Lightning's real DDP launcher, MGCN with frozen feature tables (and the module's
    popularity groups) gives DDP no buffers: nothing is broadcast from rank 0 before a step.
    The control run, with one buffer added, shows the count would see a broadcast."""
    script = tmp_path / "ddp_buffers.py"
    script.write_text(BUFFER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        seen = json.loads((tmp_path / f"buffers{rank}.json").read_text())
        ours, control = seen["ours"], seen["control"]
        assert ours["ddp"] and ours["buffers"] == [] and not ours["will_sync"] and ours["syncs"] == 0
        assert control["buffers"] == ["module.net.frozen"] and control["will_sync"]
        assert control["syncs"] >= 3  # one broadcast per training step
