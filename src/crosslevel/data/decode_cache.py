"""Decoded images kept on disk, so that a run's image files are decoded once, not by every command.

An entry holds what decoding a list of files gave: the uint8 images of the readable files and the
positions of the unreadable ones. Its name is a hash of the file list (absolute path, size and
modification time of every file), the resize side and the Pillow version: replacing or touching a
file, or asking for another size, decodes afresh. Entries live in ``$CROSSLEVEL_CACHE_DIR``, else
``$XDG_CACHE_HOME/crosslevel/decoded``, else ``~/.cache/crosslevel/decoded``; deleting the folder is
always safe. Entries are written atomically (a temporary file renamed into place), so concurrent
processes (DDP ranks) never read a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import PIL

FORMAT = 1  # raised when an entry's layout changes
DECODE_VERSION = 1  # raised when decoding itself changes (colour conversion, resize filter): old entries are not reused


def cache_dir() -> Path:
    """The folder of the decoded-image cache."""
    if os.environ.get("CROSSLEVEL_CACHE_DIR"):
        return Path(os.environ["CROSSLEVEL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crosslevel" / "decoded"


def entry_path(paths: list[Path], size: int | None) -> Path:
    """The cache file of ``paths`` decoded at ``size`` (None: the files' own size)."""
    files = [(os.path.abspath(path), *_stamp(path)) for path in paths]
    key = json.dumps([FORMAT, DECODE_VERSION, PIL.__version__, size, files])
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def load(entry: Path, count: int) -> list[np.ndarray | None] | None:
    """The decoded images of an entry of ``count`` files (None at unreadable files), or None when
    there is no usable entry."""
    try:
        with np.load(entry, allow_pickle=False) as saved:
            images, bad = saved["images"], set(saved["bad"].tolist())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, truncated or foreign: decode again
        return None
    if len(images) + len(bad) != count:
        return None
    readable = iter(images)
    return [None if index in bad else next(readable) for index in range(count)]


def save(entry: Path, arrays: list[np.ndarray | None]) -> None:
    """Store ``arrays`` (None = unreadable) when the readable ones share one shape; a cache that
    cannot be written is skipped silently."""
    readable = [array for array in arrays if array is not None]
    if not readable or len({array.shape for array in readable}) != 1:
        return  # nothing decoded, or mixed sizes (an error for the caller): nothing worth keeping
    bad = np.asarray([index for index, array in enumerate(arrays) if array is None], dtype=np.int64)
    temporary = entry.with_name(f"{entry.stem}.tmp-{os.getpid()}.npz")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        np.savez(temporary, images=np.stack(readable), bad=bad)
        os.replace(temporary, entry)
    except OSError:
        temporary.unlink(missing_ok=True)
