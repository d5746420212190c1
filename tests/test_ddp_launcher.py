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
