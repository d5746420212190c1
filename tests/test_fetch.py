"""`make data`: instructions when files are missing; validation and checksums when present."""

from __future__ import annotations

import shutil

from egra.data.fetch import main
from egra.data.synthetic import ensure_synthetic


def test_missing_files_explain_where_to_put_them(tmp_path, capsys):
    assert main(["sports", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "sports.inter" in out and str(tmp_path / "sports") in out and "MMRec" in out


def test_present_dataset_is_validated_and_checksummed(tmp_path, capsys):
    src = ensure_synthetic(tmp_path / "gen", "tiny", 0)
    dest = tmp_path / "data" / "baby"
    shutil.copytree(src, dest)
    (dest / f"{src.name}.inter").rename(dest / "baby.inter")
    assert main(["baby", "--data-dir", str(tmp_path / "data")]) == 0
    assert "ok" in capsys.readouterr().out
    assert (dest / "CHECKSUMS.sha256").exists()
    # A later change to a recorded file is reported.
    with open(dest / "baby.inter", "a") as f:
        f.write("0\t0\t5\t1\t0\n")
    assert main(["baby", "--data-dir", str(tmp_path / "data")]) == 1
