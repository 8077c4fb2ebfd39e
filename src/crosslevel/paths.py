"""Paths a user gives and files a run keeps, checked in one place: a folder that is to be created
(``out=``, an export's folder), a run's name, and the JSON files of a run directory. Each problem is a
:class:`~.errors.CrossLevelError` that names the path and the reason."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import CrossLevelError

NAME_MAX = 255  # bytes in one file or folder name on the common file systems (ext4, XFS, APFS, NTFS)


def _check_length(name: str, what: str) -> None:
    size = len(os.fsencode(name))
    if size > NAME_MAX:
        raise CrossLevelError(f"{what}: the name {name[:24]}… is {size} bytes long, more than a file system allows ({NAME_MAX})")


def check_creatable(folder: Path, what: str) -> None:
    """``folder`` exists, or can be created, and files can be written in it; else an error that starts
    with ``what``. Tried for real (a folder is made and removed where ``folder`` would go), so that a
    read-only file system, a full disk or a place like ``/proc`` is found before any work is done."""
    if "\0" in str(folder):
        raise CrossLevelError(f"{what}: the path contains a NUL character")
    for part in folder.parts:
        _check_length(part, what)
    existing = next(path for path in (folder, *folder.parents) if os.path.lexists(path))
    if not existing.is_dir():
        raise CrossLevelError(f"{what}: {existing} is {'a file' if existing.is_file() else 'not a folder'}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CrossLevelError(f"{what}: {existing} is not writable (permission denied)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".crosslevel-", dir=existing))
    except OSError as err:
        raise CrossLevelError(f"{what}: cannot create a folder in {existing} ({err.strerror})") from None


def check_run_name(name: str) -> None:
    """``name=`` names one folder directly under ``out=``: not a path, not ``.`` or ``..``."""
    if "/" in name or os.sep in name or "\0" in name or name in (".", ".."):
        raise CrossLevelError(f"name={name!r} is not a run name: it names one folder under out= (no '/', NUL, '.' or '..'); give the folder in out=")
    _check_length(name, "name= is too long")


def check_new_file(path: Path, option: str) -> None:
    """An output file must not be there already (nothing is written over)."""
    if os.path.lexists(path):
        raise CrossLevelError(f"{option} {path} exists: remove it or choose another {option} (nothing is written over)")


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in file ``path`` (a run's config, summary or data file); a missing, unreadable
    or damaged (truncated) file is an error naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CrossLevelError(f"{path} is missing") from None
    except OSError as err:
        raise CrossLevelError(f"cannot read {path}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CrossLevelError(f"{path} is damaged (truncated or not JSON: {err})") from None
    if not isinstance(value, dict):
        raise CrossLevelError(f"{path} is damaged (a JSON {type(value).__name__}, not an object)")
    return value
