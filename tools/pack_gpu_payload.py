#!/usr/bin/env python
"""Pack what a GPU training run needs and the checkout lacks into ``.gpu/`` (ignored by git).

    python tools/pack_gpu_payload.py [--out .gpu] [--data-root /work/shared/data] [--no-wheels]

The lent GPU machine (docs/gpu_run.md) gets the git checkout plus up to 8
carried ignored paths, 64 MiB in all, and can download nothing.  This writes:

- ``data/train/``: BSDS500 train + val and Urban100, re-encoded as JPEG
  (short side at most ``--short-side``, quality ``--quality``, 4:2:0) so the
  tree and the payload stay under ``--max-total-mib``;
- ``data/val/``: the first ``--val-count`` BSDS500 test images, centre crops
  of ``--val-size``² at quality 95 (4:4:4): the held-out validation set;
- ``wheels/``: the Python packages the training and export import that the
  GPU image lacks, for CPython 3.12 on manylinux x86-64 — diffusers and
  constriction at the versions installed here (``pip download`` with the
  device README's platform flags), and crcmod, which PyPI has only as an
  sdist, as a pure-Python wheel built from that sdist;
- ``MANIFEST.json``: what was packed from where, with sizes.

Kodak is never packed: it is the evaluation set.  ``/.gpu/`` is added to the
repository's ``.git/info/exclude`` so the payload is ignored (and travels
only when a run names it in ``carry``).  Prints the payload's size and the
size of what travels (tracked files + payload).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path("/work/shared/data")
TRAIN_SETS = ("bsds500/train", "bsds500/val", "urban100")
VAL_SET = "bsds500/test"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
#: The GPU image's Python, as the device README gives it (KINDS.md: python3 3.12.3, manylinux x86-64).
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux1_x86_64"]
#: Binary wheels fetched as they are (versions: what is installed here).
BINARY_WHEELS = ("diffusers", "constriction")
#: Only an sdist on PyPI; its pure-Python fallback is packed as a py3-none-any wheel.
PURE_FROM_SDIST = "crcmod"
MIB = 2**20


def image_files(folder: Path) -> list[Path]:
    """The images directly inside ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def refuse_kodak(paths: Iterable[Path]) -> None:
    """SystemExit when any source is the evaluation set: Kodak is never trained or validated on."""
    for p in paths:
        if "kodak" in str(p).lower():
            raise SystemExit(f"refusing to pack {p}: Kodak is the evaluation set")


def shrink(img: Image.Image, short_side: int) -> Image.Image:
    """``img`` scaled down (Lanczos) so its short side is at most ``short_side``."""
    w, h = img.size
    s = min(w, h)
    if s <= short_side:
        return img
    return img.resize((max(1, round(w * short_side / s)), max(1, round(h * short_side / s))), Image.LANCZOS)


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The centred ``size``x``size`` crop (or the largest square when the image is smaller)."""
    w, h = img.size
    s = min(size, w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def pack_images(train_dirs: list[Path], val_dir: Path | None, out: Path, short_side: int = 512, quality: int = 90,
                val_count: int = 32, val_size: int = 256) -> dict:
    """Write ``out/data/train`` and ``out/data/val``; returns the manifest's data section."""
    refuse_kodak(train_dirs + ([val_dir] if val_dir else []))
    train_out, val_out = out / "data" / "train", out / "data" / "val"
    for d in (train_out, val_out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    sources = []
    for folder in train_dirs:
        files = image_files(folder)
        # bsds500/train -> bsds500_train_<stem>: names stay unique across the sets
        prefix = f"{folder.parent.name}_{folder.name}" if folder.name in ("train", "val", "test") else folder.name
        for f in files:
            with Image.open(f) as im:
                img = shrink(im.convert("RGB"), short_side)
            img.save(train_out / f"{prefix}_{f.stem}.jpg", "JPEG", quality=quality, subsampling=2, optimize=True)
        sources.append({"folder": str(folder), "images": len(files)})
    val = {}
    if val_dir is not None:
        files = image_files(val_dir)[:val_count]
        for f in files:
            with Image.open(f) as im:
                img = centre_crop(im.convert("RGB"), val_size)
            img.save(val_out / f"{f.stem}.jpg", "JPEG", quality=95, subsampling=0, optimize=True)
        val = {"folder": str(val_dir), "images": len(files), "crop": val_size, "quality": 95}
    return {"train": sources, "train_images": sum(s["images"] for s in sources), "short_side": short_side,
            "quality": quality, "val": val, "train_mib": round(tree_bytes(train_out) / MIB, 2),
            "val_mib": round(tree_bytes(val_out) / MIB, 2)}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pure_wheel_from_sdist(sdist: Path, name: str, version: str, out_dir: Path) -> Path:
    """A ``py3-none-any`` wheel of the Python 3 package in ``sdist`` (no C extension: its pure fallback runs)."""
    files: dict[str, bytes] = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            # crcmod's sdist keeps its Python 3 sources in python3/<name>/; its tests are left out.
            if member.isfile() and len(parts) == 4 and parts[1:3] == ("python3", name) and parts[3].endswith(".py") \
                    and parts[3] != "test.py":
                files[f"{name}/{parts[3]}"] = tar.extractfile(member).read()
            elif member.isfile() and len(parts) == 2 and parts[1] == "LICENSE":
                files[f"{name}-{version}.dist-info/LICENSE"] = tar.extractfile(member).read()
    if f"{name}/__init__.py" not in files:
        raise SystemExit(f"{sdist}: no python3/{name}/__init__.py inside")
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: satgw tools/pack_gpu_payload.py\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/top_level.txt"] = f"{name}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{info}/RECORD,,\n"
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", record)
    return wheel


def pip(*args: str) -> None:
    """Run this interpreter's pip (the registries are reachable from here, not from the GPU host)."""
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.DEVNULL)


def pack_wheels(out: Path) -> list[dict]:
    """Write ``out/wheels``: one wheel per missing package, at the version installed here."""
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    packed = []
    for name in BINARY_WHEELS:
        version = metadata.version(name)
        pip("download", "--no-deps", *PIP_PLATFORM, "-d", str(wheels), f"{name}=={version}")
        packed.append({"name": name, "version": version})
    version = metadata.version(PURE_FROM_SDIST)
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--no-deps", "--no-binary", ":all:", "-d", tmp, f"{PURE_FROM_SDIST}=={version}")
        sdist = next(Path(tmp).glob(f"{PURE_FROM_SDIST}-{version}.tar.gz"))
        pure_wheel_from_sdist(sdist, PURE_FROM_SDIST, version, wheels)
    packed.append({"name": PURE_FROM_SDIST, "version": version, "built": "pure-Python wheel from the sdist"})
    for entry in packed:
        entry["file"] = next(p.name for p in wheels.glob("*.whl") if p.name.lower().startswith(entry["name"] + "-"))
    return packed


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tracked_bytes(root: Path) -> int:
    """Bytes of the files git tracks or would add (tracked + untracked-not-ignored): what travels besides carry."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    return sum((root / name).stat().st_size for name in out.decode().split("\0") if name and (root / name).is_file())


def exclude_from_git(root: Path, folder: Path) -> None:
    """Add ``/<folder>/`` to the repository's info/exclude (shared by its worktrees) unless it is there."""
    rel = folder.resolve().relative_to(root.resolve()).as_posix()
    path = Path(subprocess.run(["git", "-C", str(root), "rev-parse", "--git-path", "info/exclude"],
                               check=True, capture_output=True, text=True).stdout.strip())
    path = path if path.is_absolute() else root / path
    line = f"/{rel}/"
    lines = path.read_text().splitlines() if path.is_file() else []
    if line not in lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(("\n" if lines and not path.read_text().endswith("\n") else "") + line + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".gpu", help="payload folder inside the repository")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="holds bsds500/{train,val,test} and urban100")
    p.add_argument("--short-side", type=int, default=448, help="training images are scaled down to this short side")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the training images")
    p.add_argument("--val-count", type=int, default=32, help="BSDS500 test images for validation")
    p.add_argument("--val-size", type=int, default=256, help="side of the validation centre crops")
    p.add_argument("--no-wheels", action="store_true", help="data only (no registry access)")
    p.add_argument("--max-total-mib", type=float, default=60.0,
                   help="fail when tracked files + payload exceed this (the device's limit is 64 MiB)")
    args = p.parse_args(argv)

    out = args.out.resolve()
    if ROOT.resolve() not in out.parents:
        raise SystemExit(f"--out must be inside the repository {ROOT} (only the checkout travels), got {out}")
    out.mkdir(parents=True, exist_ok=True)
    exclude_from_git(ROOT, out)
    data = pack_images([args.data_root / s for s in TRAIN_SETS], args.data_root / VAL_SET, out, args.short_side,
                       args.quality, args.val_count, args.val_size)
    wheels = [] if args.no_wheels else pack_wheels(out)
    payload = tree_bytes(out)
    tracked = tracked_bytes(ROOT)
    manifest = {"data": data, "wheels": wheels, "payload_mib": round(payload / MIB, 2),
                "tracked_mib": round(tracked / MIB, 2), "total_mib": round((payload + tracked) / MIB, 2)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"training images: {data['train_images']} ({data['train_mib']} MiB), validation crops: "
          f"{data['val'].get('images', 0)} ({data['val_mib']} MiB)")
    for w in wheels:
        print(f"wheel: {w['file']} ({(out / 'wheels' / w['file']).stat().st_size / MIB:.2f} MiB)")
    print(f"payload {out}: {payload / MIB:.1f} MiB; tracked files {tracked / MIB:.1f} MiB; "
          f"what travels with carry ['{out.relative_to(ROOT.resolve())}']: {(payload + tracked) / MIB:.1f} MiB")
    if (payload + tracked) / MIB > args.max_total_mib:
        print(f"too large: over {args.max_total_mib} MiB; lower --quality or --short-side", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
