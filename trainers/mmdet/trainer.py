"""``trainer: mmdet`` — one mmdetection training per trial, in the mmdet environment's own interpreter.

The sweep side writes the data as COCO-format JSON, starts ``worker.py`` there, reads its protocol
lines, scores each epoch's predictions with the same VOC / COCO metrics as the torchvision backend and
reports them (so ASHA can stop the trial: the worker's process group is then killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from trainers.base import InputError, Reporter, Scalar, TrialParams, TrialResult, typed
from trainers.detector.config import DetectorData
from trainers.detector.data import Record
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.trainer import DEFAULT_METRIC, PER_CLASS_FILE, prepare_parts, write_rows
from trainers.lifecycle import Lifecycle, link_or_copy
from trainers.mmdet.config import MmdetHParams, MmdetModel, default_python

WORKER = Path(__file__).with_name("worker.py")
PROTOCOL = "SWEEP-EPOCH "
CHECKPOINT, BEST_FILE = "mmdet.pth", "best.pth"


def write_coco(records: list[Record], classes: list[str], path: Path, keep_difficult: bool) -> None:
    """Records as a COCO-format file (ids in record order; ``difficult`` objects as crowd regions,
    which mmdet leaves out of training, unless kept)."""
    index = {name: i + 1 for i, name in enumerate(classes)}
    images: list[dict] = []
    annotations: list[dict] = []
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


def preflight(
    dataset: BaseModel | Mapping[str, Any], model: BaseModel | Mapping[str, Any], weights: Sequence[str] = ()
) -> dict[str, Scalar]:
    """In the driver, before any trial: the interpreter, the config file, a weights file and the data are
    there (``weights`` is the model's own here: mmdet checkpoints are loaded by mmdet in its environment)."""
    dataset, model = typed(DetectorData, dataset), typed(MmdetModel, model)
    _python(model)
    if not model.config.startswith("mmdet::") and not Path(model.config).is_file():
        raise InputError(f"model.config: file not found: {model.config}")
    if model.weights not in ("config", "none") and not Path(model.weights).is_file():
        raise InputError(f"model.weights: file not found: {model.weights}")
    return prepare_parts(dataset, masks=False).info


class MmdetTrainer:
    """Implements :class:`trainers.base.Trainer` by driving an mmdetection training in a subprocess."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = typed(DetectorData, params.dataset)
        spec_model = typed(MmdetModel, params.model)
        hp = typed(MmdetHParams, params.hparams)
        python = _python(spec_model)
        params.work_dir.mkdir(parents=True, exist_ok=True)
        life = Lifecycle(params, reporter, (BEST_FILE, PER_CLASS_FILE), DEFAULT_METRIC)
        resumed = life.resume(params.resume_from)
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
            "resume_from": str(resumed / CHECKPOINT) if resumed else None,
        }
        (work / "job.json").write_text(json.dumps(job, indent=2))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["OMP_NUM_THREADS"] = str(max(1, params.threads))
        if resumed:  # an mmengine checkpoint this trial wrote itself (it pickles its log buffers)
            env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        info: dict[str, Scalar] = {
            **parts.info,
            "weights.source": spec_model.weights,
            "mmdet.config": spec_model.config,
        }
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
                epoch_ckpt = Path(msg["checkpoint"])

                def save_best(ckpt: Path = epoch_ckpt, rows: list = rows) -> None:
                    link_or_copy(ckpt, params.work_dir / BEST_FILE)  # the worker deletes old epochs' files
                    write_rows(params.work_dir / PER_CLASS_FILE, rows)

                def save_state(folder: Path, ckpt: Path = epoch_ckpt) -> None:
                    link_or_copy(ckpt, folder / CHECKPOINT)  # instant; the worker goes on

                life.end_epoch(metrics, save_best, save_state, info)
            if proc.wait() != 0:
                raise RuntimeError(f"the mmdet worker exited with {proc.returncode}: " + " | ".join(list(tail)[-3:]))
        finally:
            if proc.poll() is None:  # stopped by the scheduler (report raised) or failing: end the training
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        return life.result(info)

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
