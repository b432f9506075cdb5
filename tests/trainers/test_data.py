"""Loaders on datasets generated in the exact on-disk layouts of Caltech-101 and CUB-200-2011."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.base import InputError
from trainers.classifier.config import ClassifierData
from trainers.classifier.data import load_splits
from trainers.classifier.loader import decoded


def jpeg(path: Path, seed: int, size: tuple[int, int] = (30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def caltech(tmp_path_factory) -> Path:
    """101_ObjectCategories with 4 classes of 40–45 images and a BACKGROUND_Google folder."""
    root = tmp_path_factory.mktemp("caltech")
    tree = root / "caltech101" / "101_ObjectCategories"
    counts = {"accordion": 40, "airplanes": 45, "anchor": 42, "ant": 41, "BACKGROUND_Google": 43}
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            jpeg(tree / name / f"image_{i + 1:04d}.jpg", c * 1000 + i)
    return root


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    """CUB_200_2011 with 3 classes, its five index files and a train/test split."""
    root = tmp_path_factory.mktemp("cub")
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    k = 0
    for c, name in enumerate(classes):
        for i in range(12):
            k += 1
            rel = f"{name}/{name.split('.')[1]}_{i:04d}_{k}.jpg"
            jpeg(base / "images" / rel, k)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c + 1}")
            split.append(f"{k} {1 if i % 2 == 0 else 0}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{i + 1} {n}" for i, n in enumerate(classes)) + "\n")
    return root


def cfg(**kw) -> ClassifierData:
    return ClassifierData.model_validate({"image_size": 16, "val_fraction": 0.2, "seed": 0, **kw})


def disjoint(s) -> bool:
    parts = [set(s.train), set(s.val), set(s.test)]
    return not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_caltech101_thirty_per_class(caltech: Path) -> None:
    s = load_splits(cfg(name="caltech101", root=str(caltech), protocol={"train_per_class": 30}))
    assert s.classes == ["accordion", "airplanes", "anchor", "ant"]  # BACKGROUND_Google excluded
    trainval = np.concatenate([s.train, s.val])
    assert np.bincount(s.labels[trainval]).tolist() == [30, 30, 30, 30]
    assert np.bincount(s.labels[s.test]).tolist() == [10, 15, 12, 11]
    assert len(s.val) == 24 and disjoint(s)
    again = load_splits(cfg(name="caltech101", root=str(caltech), protocol={"train_per_class": 30}))
    other = load_splits(cfg(name="caltech101", root=str(caltech), protocol={"train_per_class": 30}, seed=1))
    assert np.array_equal(s.test, again.test) and not np.array_equal(s.test, other.test)


def test_caltech101_stratified_fraction_and_background(caltech: Path) -> None:
    s = load_splits(cfg(name="caltech101", root=str(caltech), protocol={"train_fraction": 0.8}, keep_background=True))
    assert len(s.classes) == 5 and "BACKGROUND_Google" in s.classes
    trainval = np.concatenate([s.train, s.val])
    assert np.bincount(s.labels[trainval]).tolist() == [round(n * 0.8) for n in (43, 40, 45, 42, 41)]
    assert disjoint(s)


def test_cub200_official_split(cub: Path) -> None:
    s = load_splits(cfg(name="cub200", root=str(cub)))
    assert s.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert len(s.test) == 18 and len(s.train) + len(s.val) == 18 and disjoint(s)
    test_files = {Path(s.sources[i]).name for i in s.test}
    assert all(int(name.split("_")[-2]) % 2 == 1 for name in test_files)  # is_training_image == 0 ↔ odd index


def test_missing_and_empty_datasets_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no 101_ObjectCategories folder in"):
        load_splits(cfg(name="caltech101", root=str(tmp_path)))
    with pytest.raises(InputError, match="no CUB_200_2011/images.txt"):
        load_splits(cfg(name="cub200", root=str(tmp_path)))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        load_splits(cfg(name="imagefolder", root=str(tmp_path / "empty")))
    with pytest.raises(InputError, match="imagefolder folder not found"):
        load_splits(cfg(name="imagefolder", root=str(tmp_path / "nope")))


def test_corrupt_and_truncated_images_are_counted_and_skipped(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        for i in range(10):
            jpeg(tmp_path / c / f"{i}.jpg", i)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (tmp_path / "dog" / "0.jpg").read_bytes()
    (tmp_path / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    s = load_splits(cfg(name="imagefolder", root=str(tmp_path)))
    images, ok = decoded(s, 16, tmp_path / "cache")
    assert (~ok).sum() == 2
    bad = {Path(s.sources[i]).name for i in np.flatnonzero(~ok)}
    assert bad == {"broken.jpg", "truncated.jpg"}


def test_skimage_sample_photos_decode_to_the_requested_size(tmp_path: Path) -> None:
    data = pytest.importorskip("skimage.data")
    for name in ("astronaut", "coffee", "chelsea"):
        folder = tmp_path / "photos" / name
        folder.mkdir(parents=True)
        photo = Image.fromarray(getattr(data, name)())
        for i in range(5):
            photo.rotate(i * 10).save(folder / f"{i}.png")
    s = load_splits(cfg(name="imagefolder", root=str(tmp_path / "photos")))
    images, ok = decoded(s, 32, None)
    assert ok.all() and images.shape == (15, 3, 32, 32)
    assert len(s.test) == 3 and np.bincount(s.labels[s.test]).tolist() == [1, 1, 1]
