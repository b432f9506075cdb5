"""The GPU checks, run on a machine with a CUDA GPU by ``benchmarks/gpu.sh`` (``--cpu`` runs the same code paths
tiny on the CPU, to check the script itself works where there is no GPU):

1. resnet18 and resnet50 training img/s (AMP, channels_last, the classifier trainer's own step) fed from the
   shared decoded cache vs from one synthetic batch already on the GPU (the ceiling); target ≥ 90%;
2. trials packed on one GPU: K processes (``gpus_per_trial`` 1/K, each with that memory fraction) training
   resnet18 at once; the per-trial img/s against one alone;
3. one Faster R-CNN epoch (ResNet-50 FPN, AMP, its default 800-px input) on generated Pascal VOC data, through
   the detector trainer;
4. a 4-trial `sweep run` with ``gpus_per_trial: 0.5``: how many trials trained at once (from Ray's results).

    bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.publish import demo_sweep, machine, publish

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def train_rate(arch: str, source: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    """img/s of the classifier trainer's training step (AMP, channels_last on CUDA) over ``steps`` batches from
    ``source``: ``cache`` (uint8 images decoded once, in host memory, as a sweep shares them) or ``synthetic``
    (one uint8 batch already on the device, reused)."""
    from trainers.classifier import loader
    from trainers.classifier.engine import Accumulation, Precision, train_one_epoch
    from trainers.classifier.models import build_model

    torch.manual_seed(0)
    model, _ = build_model(arch, "none", 100)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = batch * steps
    labels = np.arange(n) % 100
    if source == "synthetic":
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        target = torch.as_tensor(labels[:batch], device=device)

        def batches():  # type: ignore[no-untyped-def]
            for _ in range(steps):
                yield images, target
    else:
        decoded = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        batches = loader.cached_batches(decoded, labels, np.arange(n), batch, True, 0)
    precision = Precision(device, True)
    loss = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, batches, opt, loss, precision, None, 0.0, Accumulation())  # warm-up: cuDNN autotune
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train_one_epoch(model, batches, opt, loss, precision, None, 0.0, Accumulation())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def packed(k: int, size: int, batch: int, steps: int, device: torch.device) -> list[float]:
    """Per-process img/s of ``k`` processes training resnet18 at once on the device, each with 1/k of its memory."""
    code = (
        "import sys, torch; from benchmarks.gpu import train_rate\n"
        f"d = torch.device('{device}')\n"
        f"if d.type == 'cuda': torch.cuda.set_per_process_memory_fraction({1 / k}, d)\n"
        f"print(train_rate('resnet18', 'synthetic', {size}, {batch}, {steps}, d))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(k)
    ]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def detector_epoch(images: int, device: torch.device, workers: int) -> tuple[float, float]:
    """Seconds and img/s of one Faster R-CNN R-50 FPN training epoch (AMP, default input size) via the trainer."""
    from tests.trainers.synthetic_voc import make_voc
    from trainers import ListReporter, TrialParams
    from trainers.detector.trainer import DetectorTrainer

    with tempfile.TemporaryDirectory() as tmp:
        make_voc(Path(tmp), n_trainval=images, n_test=2, size=500)
        data = {"name": "voc", "root": str(Path(tmp) / "VOCdevkit"), "train": ["2007-trainval"], "val_fraction": 0.1}
        hp = {"epochs": 1, "lr": 0.01, "batch_size": 4, "amp": True, "num_workers": workers}
        params = TrialParams(
            data,
            {"arch": "fasterrcnn_resnet50_fpn", "weights": "none"},
            hp,
            Path(tmp) / "w",
            device=str(device),
            threads=workers,
        )
        start = time.perf_counter()
        DetectorTrainer().fit(params, ListReporter())
        wall = time.perf_counter() - start
    return wall, images / wall


def fractional_sweep(device: torch.device) -> tuple[int, str]:
    """A 4-trial sweep with gpus_per_trial 0.5: the most trials its progress lines showed running at once, and the
    devices its trials reported."""
    gpus = "0.5" if device.type == "cuda" else "0"
    sets = [
        "budget.trials=4",
        "budget.max_concurrent=4",
        f"resources.gpus_per_trial={gpus}",
        "fixed.epochs=3",
        "scheduler.name=fifo",
        "model.arch=resnet18",
        "dataset.image_size=64",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = demo_sweep(sets, Path(tmp))
        devices = set()
        for result in (Path(tmp) / "results" / "digits-demo" / "tune").glob("*/result.json"):
            rows = [json.loads(line) for line in result.read_text().splitlines()]
            devices |= {str(r["info/device"]) for r in rows if "info/device" in r}
    most = max((int(n) for n in re.findall(r"(\d+) running", out)), default=0)
    return most, ", ".join(sorted(devices))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: checks the script where no GPU is")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA GPU here (run with --cpu to check the script on the CPU)")
    device = torch.device("cpu" if args.cpu else "cuda")
    size, steps = (32, 2) if args.cpu else (224, 50)
    batches = {"resnet18": 8 if args.cpu else 256, "resnet50": 8 if args.cpu else 256}
    body = ["| model | fed from | img/s | vs synthetic |", "|---|---|---:|---:|"]
    for arch, batch in batches.items():
        synthetic = train_rate(arch, "synthetic", size, batch, steps, device)
        cache = train_rate(arch, "cache", size, batch, steps, device)
        body += [
            f"| {arch} | synthetic batch on the GPU | {synthetic:.0f} | 1.00 |",
            f"| {arch} | shared decoded cache | {cache:.0f} | {cache / synthetic:.2f} |",
        ]
    body += ["", "| trials on one GPU (gpus_per_trial) | per-trial img/s (resnet18) | vs alone |", "|---|---:|---:|"]
    alone = 0.0
    for k in (1, 2, 4):
        rates = packed(k, size, batches["resnet18"], steps, device)
        alone = alone or min(rates)
        body.append(f"| {k} ({1 / k:g}) | {min(rates):.0f} | {min(rates) / alone:.2f} |")
    wall, rate = detector_epoch(4 if args.cpu else 200, device, 2 if args.cpu else 4)
    body += [
        "",
        f"Faster R-CNN R-50 FPN, one epoch of the detector trainer (AMP, 800 px): {wall:.1f} s, {rate:.1f} img/s.",
    ]
    most, devices = fractional_sweep(device)
    body += [
        "",
        f"4-trial sweep with gpus_per_trial 0.5: at most **{most}** trials trained at once (devices: {devices}).",
    ]
    publish(
        "GPU checks (`benchmarks/gpu.sh`)",
        "bash benchmarks/gpu.sh" + (" --cpu" if args.cpu else ""),
        machine(f"{device_name(device)}, torch {torch.__version__}"),
        body,
        args.out,
    )


if __name__ == "__main__":
    main()
