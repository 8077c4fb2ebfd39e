"""Image folders: the subset is chosen before decoding (the same images as decoding everything first),
and decoded images are cached, invalidated when a file or the decoding size changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder
from crosslevel.config import Config
from crosslevel.data import folders
from crosslevel.data.datamodule import load_data, load_split_of
from crosslevel.data.sources import InMemoryImages, load_split


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths decoded from now on, in a list that fills as files are decoded."""
    decoded: list[Path] = []
    original = folders._decode
    monkeypatch.setattr(folders, "_decode", lambda path, size: decoded.append(path) or original(path, size))
    return decoded


def folder_config(data: Path, **keys: object) -> Config:
    return Config(dataset="folder", data=str(data), train_subset=12, test_subset=6, seed=3, **keys)


def decoded_first(cfg: Config, split: str, size: int) -> InMemoryImages:
    """The former path: every file of the split decoded, then the seeded stratified subset taken."""
    return load_split("folder", cfg.data, split, cfg.image_size, cfg.bad_images).subset(size, cfg.seed)  # type: ignore[return-value]


def assert_same(a: InMemoryImages, b: InMemoryImages) -> None:
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.skipped == b.skipped


def test_subset_is_chosen_before_decoding_and_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = folder_config(write_image_folder(tmp_path / "data", classes=3, per_class=10))
    decoded = count_decodes(monkeypatch)
    data = load_data(cfg)
    assert len(decoded) == 12 + 6  # the chosen files only, of 60
    assert_same(data.train, decoded_first(cfg, "train", 12))  # type: ignore[arg-type]
    assert_same(data.test, decoded_first(cfg, "test", 6))  # type: ignore[arg-type]


def test_an_unreadable_chosen_file_under_skip_gives_the_former_subset(tmp_path: Path) -> None:
    cfg = folder_config(write_image_folder(tmp_path / "data", classes=3, per_class=10), bad_images="skip")
    chosen = load_split_of(cfg, "train").subset(cfg.train_subset, cfg.seed)
    Path(chosen.paths[0]).write_bytes(b"not an image")  # type: ignore[attr-defined]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        former = decoded_first(cfg, "train", 12)
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as caught:
        train = load_data(cfg).train
    assert len([w for w in caught if "unreadable" in str(w.message)]) == 1  # said once
    assert_same(train, former)  # type: ignore[arg-type]
    assert len(train) == 12 and train.skipped == (str(chosen.paths[0]),)  # type: ignore[attr-defined]


def test_decoded_images_are_cached_until_a_file_or_the_size_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode_cache_dir: Path
) -> None:
    data = write_image_folder(tmp_path / "data", classes=2, per_class=3)
    decoded = count_decodes(monkeypatch)
    fresh = load_split("folder", str(data), "train")
    assert len(decoded) == 6 and len(list(decode_cache_dir.glob("*.npz"))) == 1
    assert_same(load_split("folder", str(data), "train"), fresh)  # type: ignore[arg-type]
    assert len(decoded) == 6  # read from the cache

    first = data / "train" / "class0" / "000.png"
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # touched
    assert_same(load_split("folder", str(data), "train"), fresh)  # type: ignore[arg-type]
    assert len(decoded) == 12

    Image.fromarray(np.full((16, 16, 3), 7, dtype=np.uint8)).save(first)  # replaced
    replaced = load_split("folder", str(data), "train")
    assert len(decoded) == 18 and (replaced.images[0] == 7).all()  # type: ignore[attr-defined]
    assert np.array_equal(replaced.images[1:], fresh.images[1:])  # type: ignore[attr-defined]

    resized = load_split("folder", str(data), "train", image_size=8)
    assert len(decoded) == 24 and resized.images.shape[1:] == (8, 8, 3)  # type: ignore[attr-defined]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_a_damaged_cache_entry_is_decoded_again(tmp_path: Path, content: bytes) -> None:
    from crosslevel.data import decode_cache

    entry = tmp_path / "entry.npz"
    entry.write_bytes(content)
    assert decode_cache.load(entry, 3) is None  # not an exception: the caller decodes the files again
