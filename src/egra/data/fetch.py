"""``make data DATASET=...``: place a real MMRec dataset and check it.

MMRec distributes Baby, Sports, Clothing, Elec and MicroLens as folders (``<name>.inter``,
``image_feat.npy``, ``text_feat.npy``) on Google Drive, which has no stable direct-download
URL. So this command does not guess one: with ``--url`` it downloads an archive you point
it at (zip or tar, optionally checked against ``--sha256``) and unpacks it into
``<data-dir>/<name>``; without it, it says where the files must go. Either way it then
validates the folder with the project's reader and records the files' sha256 in
``<data-dir>/<name>/CHECKSUMS.sha256`` so later corruption is detectable.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from egra.data.interactions import DataError

DATASETS = {
    "baby": "Amazon Baby (19,445 users, 7,050 items, 160,792 interactions)",
    "sports": "Amazon Sports (35,598 users, 18,357 items, 296,337 interactions)",
    "clothing": "Amazon Clothing (39,387 users, 23,033 items, 278,677 interactions)",
    "elec": "Amazon Electronics (192,403 users, 63,001 items, 1,689,188 interactions)",
    "microlens": "MicroLens micro-videos (MMRec's release: cover-image and title features)",
}
SOURCE = "the MMRec repository's README (github.com/enoche/MMRec, section 'Data'): a Google Drive folder per dataset"
FILES = ("{name}.inter", "image_feat.npy", "text_feat.npy")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, expected: str | None, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "download"
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
        digest = sha256(archive)
        if expected and digest != expected.lower():
            raise SystemExit(f"checksum mismatch for {url}: got {digest}, expected {expected}")
        unpacked = Path(tmp) / "unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(unpacked, filter="data")
        else:
            raise SystemExit(f"{url}: not a zip or tar archive")
        inters = list(unpacked.rglob("*.inter"))
        if len(inters) != 1:
            raise SystemExit(f"{url}: expected one .inter file in the archive, found {len(inters)}")
        src = inters[0].parent
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, dest / f.name)


def check(folder: Path, name: str) -> int:
    missing = [f.format(name=name) for f in FILES if not (folder / f.format(name=name)).exists()]
    if missing:
        print(
            f"{name}: {DATASETS[name]}\n"
            f"  missing in {folder}/: {', '.join(missing)}\n"
            f"  get the files from {SOURCE},\n"
            f"  put them in {folder}/ (the .inter file named {name}.inter), then run this again;\n"
            f"  or: make data DATASET={name} ARGS='--url <archive url> [--sha256 <hex>]'"
        )
        return 1
    from egra.data.mmrec import load_mmrec

    try:
        data = load_mmrec(folder, require_features=True)
    except DataError as err:
        print(f"{name}: {err}")
        return 1
    sums = {f.format(name=name): sha256(folder / f.format(name=name)) for f in FILES}
    record = folder / "CHECKSUMS.sha256"
    if record.exists():
        known = dict(line.split()[::-1] for line in record.read_text().splitlines() if line.strip())
        changed = [f for f, d in sums.items() if f in known and known[f] != d]
        if changed:
            print(f"{name}: files changed since they were recorded in {record}: {', '.join(changed)}")
            return 1
    record.write_text("".join(f"{d}  {f}\n" for f, d in sums.items()))
    print(f"{name}: ok {data.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--url", help="archive (zip/tar) holding the dataset folder")
    ap.add_argument("--sha256", help="expected sha256 of the archive")
    args = ap.parse_args(argv)
    folder = Path(args.data_dir) / args.dataset
    if args.url:
        _download(args.url, args.sha256, folder)
    return check(folder, args.dataset)


if __name__ == "__main__":
    sys.exit(main())
