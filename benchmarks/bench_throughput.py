"""Training throughput of the trainers against loops written the way torchvision's reference scripts train
(``references/classification`` and ``references/detection``: a torchvision dataset decoding each image with PIL
every epoch, transforms in the dataset, a DataLoader with worker processes), on the same model, data and threads.

- classifier: resnet18 from scratch on generated JPEGs of Caltech-101's sizes — the reference loop (ImageFolder,
  RandomResizedCrop + flip, DataLoader workers) vs the classifier trainer's per-epoch decoding path
  (``cache: false``, the same workers) vs its shared decoded cache (the default);
- detector: Faster R-CNN MobileNetV3-Large FPN at its family's default input size (800 px shorter side) on
  generated Pascal VOC data — the reference loop (VOCDetection, DataLoader workers) vs the detector trainer's
  dataset and training epoch.

Images per second of one training epoch, best of two interleaved epochs (the first of a process pays warm-up).

    .venv/bin/python -m benchmarks.bench_throughput --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.bench_data import make_jpegs
from benchmarks.publish import machine, publish
from trainers.classifier.config import ClassifierData, ClassifierHParams
from trainers.classifier.engine import Accumulation, Precision
from trainers.classifier.engine import train_one_epoch as classifier_epoch
from trainers.classifier.models import build_model
from trainers.detector.config import DetectorData, DetectorHParams
from trainers.detector.data import DetectionSet, collate
from trainers.detector.data import load_splits as detector_splits
from trainers.detector.engine import train_one_epoch as detector_epoch
from trainers.detector.models import build_detector

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def best_rate(epoch: Callable[[], int], rounds: int = 2) -> float:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        seen = epoch()
        rates.append(seen / (time.perf_counter() - start))
    return max(rates)


# -- classifier ------------------------------------------------------------------------------------------------


def reference_classifier(root: Path, size: int, workers: int, batch: int) -> Callable[[], int]:
    """references/classification: ImageFolder + PIL transforms per epoch, DataLoader workers, SGD."""
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    data = torchvision.datasets.ImageFolder(str(root), transform=transform)
    batches = DataLoader(data, batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(data.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> int:
        model.train()
        seen = 0
        for images, target in batches:
            loss = loss_fn(model(images), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(target)
        return seen

    return epoch


def trainer_classifier(root: Path, size: int, workers: int, batch: int, cache: Path | None) -> Callable[[], int]:
    """The classifier trainer's own data (``prepare_data``: the decoded cache, or per-epoch decoding and augmenting
    in ``workers``), its augmentation (the same crop and flip) and its training epoch."""
    from trainers.classifier.trainer import prepare_data

    cfg = ClassifierData(name="imagefolder", root=str(root), image_size=size, cache=cache is not None)
    hp = ClassifierHParams(
        epochs=1, lr=0.01, batch_size=batch, random_resized_crop=True, hflip=True, num_workers=workers
    )
    data = prepare_data(cfg, hp, 0, cache)
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "none", len(data.splits.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch() -> int:
        model.train()
        loss = torch.nn.CrossEntropyLoss()
        classifier_epoch(model, data.train, opt, loss, Precision(CPU, False), data.augment, 0.0, Accumulation())
        return len(data.splits.train)

    return epoch


# -- detector --------------------------------------------------------------------------------------------------


def reference_detector(voc: Path, arch: str, workers: int, batch: int) -> Callable[[], int]:
    """references/detection: VOCDetection decoded with PIL per epoch, targets from the XML, DataLoader workers."""
    data = torchvision.datasets.VOCDetection(str(voc), year="2007", image_set="trainval")
    classes = sorted({o["name"] for i in range(len(data)) for o in data[i][1]["annotation"]["object"]})

    class Voc(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            image, ann = data[i]
            objects = ann["annotation"]["object"]
            boxes = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
            target = {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([classes.index(o["name"]) + 1 for o in objects], dtype=torch.int64),
            }
            return v2.functional.to_dtype(v2.functional.pil_to_tensor(image), torch.float, scale=True), target

    batches = DataLoader(
        Voc(), batch, shuffle=True, num_workers=workers, collate_fn=lambda b: tuple(zip(*b, strict=True))
    )
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=len(classes) + 1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)

    def epoch() -> int:
        model.train()
        seen = 0
        for images, targets in batches:
            loss = sum(model(list(images), list(targets)).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            seen += len(images)
        return seen

    return epoch


def trainer_detector(voc: Path, arch: str, workers: int, batch: int) -> Callable[[], int]:
    """The detector trainer's dataset, DataLoader and training epoch."""
    cfg = DetectorData(name="voc", root=str(voc), train=["2007-trainval"])
    parts = detector_splits(cfg)
    hp = DetectorHParams(epochs=1, lr=0.005, batch_size=batch, num_workers=workers, warmup_iters=0)
    train_set = DetectionSet([*parts.train, *parts.val], parts.classes, True)  # every image, as the reference
    batches = DataLoader(train_set, batch, shuffle=True, num_workers=workers, collate_fn=collate)
    torch.manual_seed(0)
    model, _ = build_detector(arch, "none", len(parts.classes), hp)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)

    def epoch() -> int:
        detector_epoch(model, batches, opt, None, Precision(CPU, False))
        return len(train_set)

    return epoch


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few small images: checks that it works")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, size, batch = (100, 64, 16) if args.quick else (320, 112, 32)
    det_images, det_size, arch = (
        (4, 200, "fasterrcnn_mobilenet_v3_large_320_fpn")
        if args.quick
        else (16, 400, "fasterrcnn_mobilenet_v3_large_fpn")
    )
    from tests.trainers.synthetic_voc import make_voc

    with tempfile.TemporaryDirectory() as tmp:
        jpegs, voc = Path(tmp) / "jpegs", Path(tmp) / "voc"
        make_jpegs(jpegs, images)
        make_voc(voc, n_trainval=det_images, n_test=1, size=det_size)
        variants = {
            "torchvision reference loop (ImageFolder, PIL per epoch)": reference_classifier(
                jpegs, size, args.workers, batch
            ),
            "classifier trainer, per-epoch decoding (`cache: false`)": trainer_classifier(
                jpegs, size, args.workers, batch, None
            ),
            "classifier trainer, shared decoded cache (default)": trainer_classifier(
                jpegs, size, args.workers, batch, Path(tmp) / "cache"
            ),
        }
        detector = {
            "torchvision reference loop (VOCDetection, PIL per epoch)": reference_detector(voc, arch, args.workers, 2),
            "detector trainer (its dataset and epoch)": trainer_detector(voc / "VOCdevkit", arch, args.workers, 2),
        }
        rates = {name: 0.0 for name in [*variants, *detector]}
        for _ in range(2):  # interleaved
            for name, epoch in [*variants.items(), *detector.items()]:
                rates[name] = max(rates[name], best_rate(epoch, rounds=1))
    ref_c, ref_d = next(iter(variants)), next(iter(detector))
    body = [
        f"Classifier: resnet18 from scratch, {images} JPEGs (200–300 px sides) at {size} px, batch {batch}. "
        f"Detector: {arch} from scratch at its default input size, {det_images} generated VOC images of "
        f"{det_size} px, batch 2. {args.threads} torch threads, {args.workers} DataLoader workers for every loop "
        "that decodes per epoch.",
        "",
        "| model | training loop | img/s | vs reference |",
        "|---|---|---:|---:|",
        *[f"| resnet18 | {n} | {rates[n]:.1f} | {rates[n] / rates[ref_c]:.2f}× |" for n in variants],
        *[f"| {arch} | {n} | {rates[n]:.2f} | {rates[n] / rates[ref_d]:.2f}× |" for n in detector],
        "",
        "On 2 CPU cores the model's own compute bounds both loops; the decoded cache's gain is the decoding it",
        "takes off those cores (see the loading rates above), and on a GPU it is the ceiling (`benchmarks/gpu.sh`).",
    ]
    command = ".venv/bin/python -m benchmarks.bench_throughput" + (" --quick" if args.quick else "")
    publish(
        "Training throughput vs. torchvision's reference loops (`benchmarks/bench_throughput.py`)",
        command,
        machine(f"CPU only, torch {torch.__version__}"),
        body,
        args.out,
    )


if __name__ == "__main__":
    main()
