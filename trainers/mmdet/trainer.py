"""``trainer: mmdet`` — one mmdetection training per trial, in the mmdet environment's own interpreter.

The sweep side writes the data as COCO-format JSON, starts ``worker.py`` there, reads its protocol
lines, scores each epoch's predictions with the same VOC / COCO metrics as the torchvision backend and
reports them (so ASHA can stop the trial: the worker's process group is then killed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.base import InputError, Reporter, Scalar, TrialParams, TrialResult
from trainers.detector.config import DetectorData
from trainers.detector.data import Record
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.trainer import PER_CLASS_FILE, _write_rows, prepare_parts
from trainers.mmdet.config import MmdetHParams, MmdetModel, default_python

WORKER = Path(__file__).with_name("worker.py")
PROTOCOL = "SWEEP-EPOCH "
CHECKPOINT = "mmdet.pth"


def write_coco(records: list[Record], classes: list[str], path: Path, keep_difficult: bool) -> None:
    """Records as a COCO-format file (ids in record order; ``difficult`` objects as crowd regions,
    which mmdet leaves out of training, unless kept)."""
    index = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    for i, r in enumerate(records):
        h, w = r.size
        images.append({"id": i, "file_name": str(r.image.resolve()), "height": h, "width": w})
        for box, name, difficult in zip(r.boxes.tolist(), r.names, r.difficult.tolist(), strict=True):
            if name not in index:
                continue
            x1, y1, x2, y2 = box
            crowd = int(difficult and not keep_difficult)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": index[name],
                    "iscrowd": crowd,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def targets_of(records: list[Record], classes: list[str]) -> list[dict[str, torch.Tensor]]:
    """Ground truth for scoring, without decoding any image."""
    index = {name: i + 1 for i, name in enumerate(classes)}
    out = []
    for r in records:
        keep = np.asarray([n in index for n in r.names], dtype=bool)
        out.append(
            {
                "boxes": torch.from_numpy(r.boxes[keep]).reshape(-1, 4),
                "labels": torch.tensor([index[n] for n in np.asarray(r.names)[keep]], dtype=torch.int64),
                "difficult": torch.from_numpy(r.difficult[keep]),
            }
        )
    return out


def _python(model: MmdetModel) -> str:
    python = Path(model.python or default_python()).expanduser()
    if not python.exists():
        raise InputError(
            f"model.python: no mmdet environment at {python}; build it with scripts/mmdet-env.sh "
            "or name its interpreter in model.python / $SWEEP_MMDET_PYTHON"
        )
    return str(python)


def preflight(dataset: dict[str, Any], model: dict[str, Any]) -> dict[str, Scalar]:
    """In the driver, before any trial: the interpreter, the config file and the data are there."""
    spec_model = MmdetModel.model_validate(model)
    _python(spec_model)
    if not spec_model.config.startswith("mmdet::") and not Path(spec_model.config).expanduser().is_file():
        raise InputError(f"model.config: file not found: {spec_model.config}")
    if spec_model.weights not in ("config", "none") and not Path(spec_model.weights).expanduser().is_file():
        raise InputError(f"model.weights: file not found: {spec_model.weights}")
    return prepare_parts(DetectorData.model_validate(dataset), masks=False).info


class MmdetTrainer:
    """Implements :class:`trainers.base.Trainer` by driving an mmdetection training in a subprocess."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = DetectorData.model_validate(params.dataset)
        spec_model = MmdetModel.model_validate(params.model)
        hp = MmdetHParams.model_validate(params.hparams)
        python = _python(spec_model)
        parts = prepare_parts(cfg, masks=False)
        work = params.work_dir / "mmdet"
        work.mkdir(parents=True, exist_ok=True)
        write_coco(parts.train, parts.classes, work / "train.json", cfg.train_difficult)
        write_coco(parts.val, parts.classes, work / "val.json", keep_difficult=True)
        targets = targets_of(parts.val, parts.classes)
        job = {
            "config": spec_model.config,
            "weights": spec_model.weights
            if spec_model.weights in ("config", "none")
            else str(Path(spec_model.weights).expanduser().resolve()),
            "work_dir": str(work),
            "train_ann": str(work / "train.json"),
            "val_ann": str(work / "val.json"),
            "classes": parts.classes,
            "hparams": hp.model_dump(),
            "seed": params.seed,
            "resume_from": str(params.resume_from / CHECKPOINT) if params.resume_from else None,
        }
        (work / "job.json").write_text(json.dumps(job, indent=2))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["OMP_NUM_THREADS"] = str(max(1, params.threads))
        if params.resume_from:  # an mmengine checkpoint this trial wrote itself (it pickles its log buffers)
            env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        info: dict[str, Scalar] = {
            **parts.info,
            "weights.source": spec_model.weights,
            "mmdet.config": spec_model.config,
        }
        history: list[dict[str, float]] = []
        best: float | None = None
        log = (work / "worker.log").open("a")
        tail: deque[str] = deque(maxlen=20)
        proc = subprocess.Popen(
            [python, str(WORKER), str(work / "job.json")],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith(PROTOCOL):
                    log.write(line)
                    tail.append(line.rstrip())
                    continue
                msg = json.loads(line[len(PROTOCOL) :])
                metrics, rows = self._score(msg, targets, parts.classes)
                history.append(metrics)
                if best is None or metrics["val_map50"] > best:
                    best = metrics["val_map50"]
                    shutil.copy(msg["checkpoint"], params.work_dir / "best.pth")
                    _write_rows(params.work_dir / PER_CLASS_FILE, rows)
                with tempfile.TemporaryDirectory(dir=params.work_dir) as tmp:
                    os.link(msg["checkpoint"], Path(tmp) / CHECKPOINT)  # instant; the worker goes on
                    for name in ("best.pth", PER_CLASS_FILE):
                        os.link(params.work_dir / name, Path(tmp) / name)
                    reporter.report(metrics, Path(tmp), info if len(history) == 1 else None)
            if proc.wait() != 0:
                raise RuntimeError(f"the mmdet worker exited with {proc.returncode}: " + " | ".join(list(tail)[-3:]))
        finally:
            if proc.poll() is None:  # stopped by the scheduler (report raised) or failing: end the training
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        top = max(history, key=lambda m: m["val_map50"])
        return TrialResult(top, len(history), params.work_dir / "best.pth", info)

    @staticmethod
    def _score(msg: dict[str, Any], targets: list, classes: list[str]) -> tuple[dict[str, float], list]:
        preds = [
            {
                "boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(p["scores"], dtype=torch.float32),
                "labels": torch.tensor(p["labels"], dtype=torch.int64) + 1,
            }
            for p in sorted(json.loads(Path(msg["predictions"]).read_text()), key=lambda p: p["image_id"])
        ]
        evaluator = DetectionEvaluator(classes, masks=False, per_class=True)
        evaluator.update(preds, targets)
        scores, rows = evaluator.compute("val")
        return {"epoch": float(msg["epoch"]), "train_loss": msg["train_loss"], **scores}, rows
