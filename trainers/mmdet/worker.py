"""Runs one mmdetection training inside the mmdet environment (stdlib + mmengine + mmdet only; this file
is executed there by path, never imported by the sweep's own environment).

    python worker.py JOB.json

A job with ``"mode": "test"`` and a ``checkpoint`` only predicts the images of ``val_ann`` (predictions.json).

The job names the config, the data (COCO-format JSON written by the sweep) and the trial's parameters.
After every validation it prints one protocol line on stdout::

    SWEEP-EPOCH {"epoch": 3, "checkpoint": ".../epoch_3.pth", "predictions": ".../predictions_3.json", ...}

The sweep side scores the predictions with its own VOC / COCO metrics, so both backends report the
same numbers, and relays them to Ray Tune.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PROTOCOL = "SWEEP-EPOCH "


def _set_everywhere(node: Any, key: str, value: Any) -> None:
    """Set ``key`` in every dict of a config subtree that has it (heads of cascades are lists)."""
    if isinstance(node, dict):
        if key in node:
            node[key] = value
        for child in node.values():
            _set_everywhere(child, key, value)
    elif isinstance(node, list):
        for child in node:
            _set_everywhere(child, key, value)


def _innermost(dataset: Any) -> Any:
    while "dataset" in dataset:  # RepeatDataset, MultiImageMixDataset, ...
        dataset = dataset["dataset"]
    return dataset


def _resolve_config(name: str) -> str:
    if name.startswith("mmdet::"):
        import mmdet

        return str(Path(mmdet.__file__).parent / ".mim" / "configs" / name.removeprefix("mmdet::"))
    return name


def build_config(job: dict[str, Any]) -> Any:
    from mmengine.config import Config

    cfg = Config.fromfile(_resolve_config(job["config"]))
    hp, classes = job["hparams"], job["classes"]
    cfg.work_dir = job["work_dir"]
    _set_everywhere(cfg.model, "num_classes", len(classes))
    _set_everywhere(cfg.model.get("test_cfg", {}), "score_thr", 0.0)  # mAP needs the whole ranking
    if hp.get("frozen_stages") is not None and "frozen_stages" in cfg.model.backbone:
        cfg.model.backbone.frozen_stages = hp["frozen_stages"]
    if job["weights"] == "none":
        _set_everywhere(cfg.model, "init_cfg", None)  # no download of ImageNet weights: from scratch
    elif job["weights"] != "config":
        cfg.load_from = job["weights"]
    for part, ann in (("train", job["train_ann"]), ("val", job["val_ann"])):
        loader = cfg[f"{part}_dataloader"]
        loader.batch_size = hp["batch_size"] if part == "train" else 1
        loader.num_workers = hp["num_workers"]
        loader.persistent_workers = hp["num_workers"] > 0
        ds = _innermost(loader.dataset)
        ds.update(data_root="", ann_file=ann, data_prefix={"img": ""}, metainfo={"classes": tuple(classes)})
        if part == "val":
            ds.test_mode = True
        if hp.get("input_size"):
            for step in ds.get("pipeline", []):
                if step.get("type") in ("Resize", "RandomResize") and "scale" in step:
                    step.update(type="Resize", scale=(hp["input_size"], hp["input_size"]), keep_ratio=True)
                    step.pop("ratio_range", None)
                    step.pop("resize_type", None)
    if hp.get("repeat"):
        repeated = cfg.train_dataloader.dataset
        while repeated.get("type") != "RepeatDataset" and "dataset" in repeated:
            repeated = repeated["dataset"]
        if repeated.get("type") == "RepeatDataset":
            repeated["times"] = hp["repeat"]
        elif hp["repeat"] > 1:
            train = cfg.train_dataloader.dataset
            cfg.train_dataloader.dataset = {"type": "RepeatDataset", "times": hp["repeat"], "dataset": train}
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = cfg.test_evaluator = {"type": "SweepPredictions", "out_dir": job["work_dir"]}
    cfg.train_cfg = {"type": "EpochBasedTrainLoop", "max_epochs": hp["epochs"], "val_interval": 1}
    optimizer = dict(cfg.optim_wrapper.get("optimizer", {}))
    if hp.get("optimizer"):
        kind = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}[hp["optimizer"]]
        optimizer = {"type": kind, **({"momentum": hp["momentum"]} if kind == "SGD" else {})}
    optimizer.update(lr=hp["lr"], weight_decay=hp["weight_decay"])
    cfg.optim_wrapper.optimizer = optimizer
    cfg.optim_wrapper.pop("type", None)
    cfg.optim_wrapper.type = "OptimWrapper"
    cfg.optim_wrapper.clip_grad = {"max_norm": hp["grad_clip"]} if hp["grad_clip"] else None
    if hp["schedule"] != "config":
        main = (
            {"type": "CosineAnnealingLR", "T_max": hp["epochs"], "by_epoch": True, "begin": 0, "end": hp["epochs"]}
            if hp["schedule"] == "cosine"
            else {
                "type": "MultiStepLR",
                "milestones": [max(1, int(hp["epochs"] * f)) for f in (2 / 3, 11 / 12)],
                "gamma": 0.1,
                "by_epoch": True,
                "begin": 0,
                "end": hp["epochs"],
            }
        )
        warm = [{"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": hp["warmup_iters"]}]
        cfg.param_scheduler = (warm if hp["warmup_iters"] else []) + [main]
    cfg.default_hooks.checkpoint = {"type": "CheckpointHook", "interval": 1, "max_keep_ckpts": 2}
    cfg.default_hooks.logger = {"type": "LoggerHook", "interval": 10}
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), {"type": "SweepRelay"}]
    cfg.pop("auto_scale_lr", None)
    cfg.visualizer.name = f"sweep-{os.getpid()}"
    cfg.randomness = {"seed": job["seed"]}
    if job.get("resume_from"):
        cfg.load_from, cfg.resume = job["resume_from"], True
    return cfg


def register() -> None:
    from mmdet.registry import HOOKS, METRICS
    from mmengine.evaluator import BaseMetric
    from mmengine.hooks import Hook

    @METRICS.register_module(force=True)
    class SweepPredictions(BaseMetric):
        """Keeps every image's predictions (boxes, scores, 0-based labels) for the sweep to score."""

        def __init__(self, out_dir: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.out_dir = Path(out_dir)

        def process(self, data_batch: Any, data_samples: Any) -> None:
            for sample in data_samples:
                pred = sample["pred_instances"]
                self.results.append(
                    {
                        "image_id": int(sample["img_id"]),
                        "boxes": pred["bboxes"].cpu().tolist(),
                        "scores": pred["scores"].cpu().tolist(),
                        "labels": pred["labels"].cpu().tolist(),
                    }
                )

        def compute_metrics(self, results: list) -> dict:
            tmp = self.out_dir / "predictions.tmp"
            tmp.write_text(json.dumps(results))
            tmp.replace(self.out_dir / "predictions.json")
            return {"images": float(len(results))}

    @HOOKS.register_module(force=True)
    class SweepRelay(Hook):
        """After each validation: the epoch's checkpoint and predictions, as one protocol line."""

        priority = "LOWEST"

        def after_val_epoch(self, runner: Any, metrics: Any = None) -> None:
            work = Path(runner.work_dir)
            predictions = work / f"predictions_{runner.epoch}.json"
            (work / "predictions.json").replace(predictions)
            loss = runner.message_hub.get_scalar("train/loss")
            line = {
                "epoch": runner.epoch,
                "checkpoint": str(work / f"epoch_{runner.epoch}.pth"),
                "predictions": str(predictions),
                "train_loss": float(loss.mean(window_size=10**9)) if loss is not None else float("nan"),
            }
            print(PROTOCOL + json.dumps(line), flush=True)


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    register()
    from mmengine.runner import Runner

    cfg = build_config(job)
    if job.get("mode") == "test":  # predictions of a checkpoint on the images of val_ann: predictions.json
        cfg.load_from, cfg.resume = job["checkpoint"], False
        Runner.from_cfg(cfg).test()
        return
    Runner.from_cfg(cfg).train()


if __name__ == "__main__":
    main(sys.argv[1])
