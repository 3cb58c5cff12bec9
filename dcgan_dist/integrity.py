"""What makes a checkpoint trustworthy: a record of every file it holds, checked before a resume,
and the disk space the next one needs.

`meta.json` lists every other file of the checkpoint (all ranks' files included) with its size
and SHA-256. A checkpoint whose files are missing, cut short or changed is *damaged*: resume=auto
skips it with a warning and takes the previous intact one; resume=<path> refuses it. Hashing a
64x64 DCGAN checkpoint (~100 MB: both models, both Adam states, the EMA) takes a fraction of a
second, paid once per save and once per resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from .layout import META
_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_records(root: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `root` except meta.json."""
    records = {}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != META:
                records[rel] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return dict(sorted(records.items()))


def problem(path: Path, fmt: str) -> Optional[str]:
    """What is wrong with the checkpoint at `path`, or None when it is intact."""
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return f"no {META} (an interrupted save)"
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError: a cut-short meta.json
        return f"{META} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        return f"unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r} (expected {fmt})"
    records = meta.get("files")
    if records is None:  # written before records existed: at least every rank's own file must be there
        missing = [f"dcgan_rank{r}.pt" for r in range(int(meta.get("world_size", 1)))
                   if not (path / f"dcgan_rank{r}.pt").is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    for rel, want in records.items():
        f = path / rel
        if not f.is_file():
            return f"missing {rel}"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{rel} is {size:,} bytes, {want['size']:,} when saved (cut short or overwritten)"
    for rel, want in records.items():  # sizes first: a truncated file is found without hashing anything
        if sha256(path / rel) != want["sha256"]:
            return f"{rel} does not match the SHA-256 recorded when it was saved (changed or corrupted on disk)"
    return None


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
