"""The detector: VOC / COCO data in their real formats, VOC AP on hand-computed cases, COCO mAP from
pycocotools, head replacement for every torchvision detector, weights from the hub cache, pictures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.trainers.synthetic_voc import CLASSES, make_voc
from trainers.base import InputError
from trainers.detector.config import ARCHS, DetectorData, DetectorHParams
from trainers.detector.data import DetectionSet, collate, load_splits
from trainers.detector.engine import foreground
from trainers.detector.metrics import DetectionEvaluator, voc_ap, voc_map
from trainers.detector.models import build_detector
from trainers.detector.trainer import mask_records


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return root, make_voc(root, n_trainval=40, n_test=10)


def _cfg(root: Path, **kw) -> DetectorData:
    return DetectorData(name="voc", root=str(root / "VOCdevkit"), train=["2007-trainval"], test="2007-test", **kw)


def test_voc_loads_with_the_right_boxes_labels_difficult_flags_and_masks(voc) -> None:
    root, truth = voc
    splits = load_splits(_cfg(root))
    assert splits.classes == sorted(CLASSES)
    assert len(splits.train) + len(splits.val) == 40 and len(splits.test) == 10
    for record in splits.train + splits.val + splits.test:
        image_id = record.image.stem
        want = np.asarray(truth.boxes[image_id], dtype=np.float32)
        want[:, :2] -= 1  # VOC's 1-based inclusive corners → continuous coordinates
        np.testing.assert_array_equal(record.boxes, want)
        assert list(record.names) == truth.names[image_id]
        assert record.difficult.tolist() == truth.difficult[image_id]
        assert record.has_masks == (image_id in truth.segmented)
    masked = mask_records(splits.train)
    dataset = DetectionSet(masked, splits.classes, train=False, masks=True)
    for i, record in enumerate(masked):
        image, target = dataset[i]
        assert image.shape == (3, 128, 128) and image.min() >= 0 and image.max() <= 1
        assert target["labels"].tolist() == [splits.classes.index(n) + 1 for n in record.names]
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()  # mask fills its box


def test_training_targets_drop_difficult_objects_evaluation_keeps_them_flagged(voc) -> None:
    root, _ = voc
    splits = load_splits(_cfg(root))
    records = splits.train + splits.val
    i = next(k for k, r in enumerate(records) if r.difficult.any())
    _, train_target = DetectionSet(records, splits.classes, train=True)[i]
    _, eval_target = DetectionSet(records, splits.classes, train=False)[i]
    assert len(train_target["boxes"]) == int((~records[i].difficult).sum())
    assert eval_target["difficult"].tolist() == records[i].difficult.tolist()
    kept = DetectionSet(records, splits.classes, train=True, keep_difficult=True)[i][1]
    assert len(kept["boxes"]) == len(records[i].names)


def test_own_classes_in_one_voc_folder_and_from_the_spec(voc, tmp_path: Path) -> None:
    root, _ = voc
    folder = root / "VOCdevkit" / "VOC2007"  # as an annotation tool exports it: no VOCdevkit around it
    splits = load_splits(DetectorData(name="voc", root=str(folder), train=["all"], test=None))
    assert splits.classes == sorted(CLASSES) and len(splits.train) + len(splits.val) == 50
    only = load_splits(DetectorData(name="voc", root=str(folder), train=["trainval"], test=None, classes=["square"]))
    image, target = DetectionSet(only.train, only.classes, train=False)[0]
    assert set(target["labels"].tolist()) <= {1}


def test_missing_parts_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"dataset.train\[0\]: '2012-trainval' needs .*VOC2012/ImageSets/Main"):
        load_splits(DetectorData(name="voc", root=str(tmp_path), train=["2012-trainval"], test=None))


def test_coco_format_gives_the_same_objects(voc, tmp_path: Path) -> None:
    root, truth = voc
    base = root / "VOCdevkit" / "VOC2007"
    ids = sorted(truth.boxes)[:10]
    cats = [{"id": i + 7, "name": n} for i, n in enumerate(CLASSES)]
    anns, images = [], []
    for k, image_id in enumerate(ids):
        images.append({"id": k, "file_name": f"{image_id}.jpg", "height": 128, "width": 128})
        for b, n in zip(truth.boxes[image_id], truth.names[image_id], strict=True):
            x, y, w, h = b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": k,
                    "category_id": CLASSES.index(n) + 7,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    cfg = DetectorData(
        name="coco",
        root=str(tmp_path),
        train=[{"annotations": "ann.json", "images": str(base / "JPEGImages")}],
        test=None,
        val_fraction=0.2,
    )
    splits = load_splits(cfg)
    for record in splits.train + splits.val:
        want = np.asarray(truth.boxes[record.image.stem], dtype=np.float32)
        want[:, :2] -= 1
        np.testing.assert_array_equal(record.boxes, want)
    _, target = DetectionSet(splits.train, splits.classes, train=False, masks=True)[0]
    assert target["masks"].shape[0] == len(target["boxes"]) and target["masks"].sum() > 0


# ----------------------------------------------------------------------------------- VOC AP by hand


def _t(boxes, labels, difficult=None):
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    d["difficult"] = torch.tensor(difficult if difficult is not None else [False] * len(labels))
    return d


def _p(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


A, B, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


@pytest.mark.parametrize(
    ("preds", "targets", "area", "eleven"),
    [
        # perfect: every object found, nothing else
        ([_p([A, B], [0.9, 0.8], [1, 1])], [_t([A, B], [1, 1])], 1.0, 1.0),
        # one of two objects missed: recall stops at 0.5 with precision 1
        ([_p([A], [0.9], [1])], [_t([A, B], [1, 1])], 0.5, 6 / 11),
        # a duplicate of A ranked between the two hits: TP, FP, TP
        ([_p([A, A, B], [0.9, 0.8, 0.7], [1, 1, 1])], [_t([A, B], [1, 1])], 0.5 + 0.5 * 2 / 3, (6 + 5 * 2 / 3) / 11),
        # a false positive ranked first
        ([_p([FAR, A], [0.9, 0.8], [1, 1])], [_t([A], [1])], 0.5, 0.5),
        # a detection on a difficult object counts as neither hit nor miss
        ([_p([B, A], [0.9, 0.8], [1, 1])], [_t([A, B], [1, 1], [False, True])], 1.0, 1.0),
        # wrong class: a miss and a false positive
        ([_p([A], [0.9], [2])], [_t([A], [1])], 0.0, 0.0),
    ],
)
def test_voc_ap_equals_hand_computed_values(preds, targets, area, eleven) -> None:
    result = voc_map(preds, targets, num_classes=1)
    assert result["area"][0] == pytest.approx(area)
    assert result["11point"][0] == pytest.approx(eleven)


def test_a_class_with_only_difficult_objects_is_left_out_of_the_mean() -> None:
    preds = [_p([A, B], [0.9, 0.8], [1, 2])]
    targets = [_t([A, B], [1, 2], [False, True])]
    result = voc_map(preds, targets, num_classes=2)
    assert result["area"][0] == 1.0 and np.isnan(result["area"][1]) and result["n_gt"].tolist() == [1, 0]
    evaluator = DetectionEvaluator(["a", "b"], masks=False)
    evaluator.update(preds, targets)
    assert evaluator.compute()[0]["val_map50"] == 1.0


def test_voc_ap_on_the_classic_curve() -> None:
    recall = np.array([0.2, 0.4, 0.4, 0.6, 0.8])
    precision = np.array([1.0, 1.0, 0.67, 0.75, 0.8])
    # envelope: 1 up to recall .4, then .8 up to .8; nothing beyond
    assert voc_ap(recall, precision, eleven_point=False) == pytest.approx(0.4 * 1.0 + 0.4 * 0.8)
    assert voc_ap(recall, precision, eleven_point=True) == pytest.approx((5 * 1.0 + 4 * 0.8) / 11)


def test_coco_map_is_pycocotools_own_number() -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    preds, targets, gt_json, dt_json = [], [], {"images": [], "annotations": [], "categories": []}, []
    gt_json["categories"] = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    for i in range(6):
        gt = rng.uniform(0, 80, (3, 2))
        boxes = np.concatenate([gt, gt + rng.uniform(10, 40, (3, 2))], axis=1)
        labels = rng.integers(1, 3, 3)
        jitter = boxes + rng.normal(0, 3, boxes.shape)
        scores = rng.uniform(0.1, 1, 3)
        preds.append(_p(jitter.tolist(), scores.tolist(), labels.tolist()))
        targets.append(_t(boxes.tolist(), labels.tolist()))
        gt_json["images"].append({"id": i, "height": 128, "width": 128})
        for b, lbl in zip(boxes, labels, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            gt_json["annotations"].append(
                {
                    "id": len(gt_json["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(lbl),
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, lbl in zip(jitter, scores, labels, strict=True):
            dt_json.append(
                {
                    "image_id": i,
                    "category_id": int(lbl),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": float(s),
                }
            )
    coco = COCO()
    coco.dataset = gt_json
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dt_json), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    evaluator = DetectionEvaluator(["a", "b"], masks=False)
    evaluator.update(preds, targets)
    metrics, _ = evaluator.compute()
    assert metrics["val_map"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert metrics["val_coco_map50"] == pytest.approx(ev.stats[1], abs=1e-6)


# ------------------------------------------------------------------------------------------- models

HP = DetectorHParams(min_size=128, max_size=128)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_detector_gets_heads_for_the_dataset_classes(arch: str) -> None:
    torch.manual_seed(0)
    model, source = build_detector(arch, "none", 3, HP)
    assert source == "none"
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128), torch.rand(3, 128, 128)])
    out = [foreground(o) for o in out]
    assert len(out) == 2 and all(((o["labels"] >= 1) & (o["labels"] <= 3)).all() for o in out)
    if arch.startswith(("fasterrcnn", "maskrcnn")):
        assert model.roi_heads.box_predictor.cls_score.out_features == 4
    if arch.startswith("maskrcnn"):
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4 and "masks" in out[0]


def test_coco_weights_come_from_the_hub_cache_with_new_heads(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    with pytest.raises(InputError, match=r"not in .*hub/checkpoints"):
        build_detector(arch, "coco", 3, HP)
    coco = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    state = {k: v for k, v in coco.state_dict().items() if not k.endswith("num_batches_tracked")}  # FrozenBN
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / Path(url).name)
    model, source = build_detector(arch, "coco", 3, DetectorHParams(trainable_layers=2))
    assert source.startswith("coco:")
    assert torch.equal(model.state_dict()["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    frozen = [n for n, p in model.backbone.body.named_parameters() if not p.requires_grad]
    assert frozen and any(p.requires_grad for p in model.backbone.body.parameters())  # trainable_layers=2


def test_a_weights_file_fills_what_fits(tmp_path: Path) -> None:
    donor, _ = build_detector("fasterrcnn_small", "none", 5, HP)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    model, source = build_detector("fasterrcnn_small", str(tmp_path / "w.pt"), 3, HP)
    assert source.startswith("file:") and "sha256=" in source
    assert torch.equal(model.backbone[0].weight, donor.backbone[0].weight)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot load"):
        build_detector("fasterrcnn_small", str(tmp_path / "bad.pt"), 3, HP)


def test_collate_leaves_out_unreadable_images(voc, tmp_path: Path) -> None:
    root, _ = voc
    splits = load_splits(_cfg(root))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Image.open(splits.train[0].image).tobytes()[:100])
    from dataclasses import replace

    records = [replace(splits.train[0], image=broken), splits.train[1]]
    dataset = DetectionSet(records, splits.classes, train=True)
    images, targets = collate([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 1 and dataset.n_unreadable == 1


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [("fasterrcnn_mobilenet_v3_large_320_fpn", ((320,), 640)), ("fasterrcnn_resnet50_fpn", ((800,), 1333))],
)
def test_unset_input_size_is_the_architectures_own(arch: str, sizes: tuple) -> None:
    model, _ = build_detector(arch, "none", 3, DetectorHParams())
    assert (tuple(model.transform.min_size), model.transform.max_size) == sizes
    model, _ = build_detector(arch, "none", 3, DetectorHParams(min_size=256, max_size=400))
    assert (tuple(model.transform.min_size), model.transform.max_size) == ((256,), 400)
