from pathlib import Path

import numpy as np
import pytest
import torch

from trainers import ListReporter, TrialParams
from trainers.base import Diverged, InputError
from trainers.classifier import loader
from trainers.classifier.config import ClassifierData, ClassifierHParams
from trainers.classifier.data import load_splits
from trainers.classifier.models import build_model
from trainers.classifier.trainer import ClassifierTrainer, load_classifier

DIGITS = {"name": "digits", "image_size": 16, "val_fraction": 0.2, "seed": 0}


def fit(tmp_path: Path, hparams: dict, model: dict | None = None, resume: Path | None = None) -> tuple:
    reporter = ListReporter()
    params = TrialParams(
        dataset=DIGITS,
        model=model or {"arch": "small_cnn"},
        hparams=hparams,
        work_dir=tmp_path,
        resume_from=resume,
        threads=2,
        cache_dir=tmp_path / "cache",
    )
    return ClassifierTrainer().fit(params, reporter), reporter


def test_learns_digits_far_above_chance(tmp_path: Path) -> None:
    result, reporter = fit(tmp_path, {"epochs": 4, "lr": 0.05, "batch_size": 32, "optimizer": "sgd"})
    top1 = [m["val_top1"] for m in reporter.metrics]
    assert [m["epoch"] for m in reporter.metrics] == [1, 2, 3, 4]
    assert max(top1) >= 0.90, top1  # chance is 0.10
    assert result.best_metrics["val_top1"] == max(top1)
    assert reporter.info["data.n_classes"] == 10
    assert reporter.info["data.n_train"] + reporter.info["data.n_val"] + reporter.info["data.n_test"] == 1797
    model, blob = load_classifier(result.best_weights)
    assert blob["classes"] == [str(i) for i in range(10)] and blob["metrics"]["val_top1"] == max(top1)
    assert all(c is not None for c in reporter.checkpoints[:3])  # every epoch a resume could continue from


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    import shutil

    kept = tmp_path / "kept"
    params = {"epochs": 3, "lr": 0.05, "batch_size": 64}

    class Keep(ListReporter):
        def report(self, metrics, checkpoint_dir=None, info=None):
            super().report(metrics, checkpoint_dir, info)
            if metrics["epoch"] == 2:
                shutil.copytree(checkpoint_dir, kept)

    full = ListReporter()
    ClassifierTrainer().fit(TrialParams(DIGITS, {"arch": "small_cnn"}, params, tmp_path / "a", threads=2), Keep())
    result = ClassifierTrainer().fit(
        TrialParams(DIGITS, {"arch": "small_cnn"}, params, tmp_path / "b", resume_from=kept, threads=2), full
    )
    assert [m["epoch"] for m in full.metrics] == [3]
    assert result.epochs_run == 3


def test_cached_batches_equal_decoded_batches(tmp_path: Path) -> None:
    cfg = ClassifierData.model_validate(DIGITS)
    splits = load_splits(cfg)
    images, ok = loader.decoded(splits, 16, tmp_path)
    assert ok.all() and images.dtype == torch.uint8 and images.shape == (1797, 3, 16, 16)
    cached = loader.cached_batches(images, splits.labels, splits.val, 50, False, 0)
    decoding = loader.decoding_batches(splits, splits.val, 16, 50, False, 0, 0)
    pairs = list(zip(cached(), decoding(), strict=True))
    assert len(pairs) == -(-len(splits.val) // 50)
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        a = loader.to_input(xa, torch.device("cpu"), None)
        assert torch.equal(a, loader.to_input(xb, torch.device("cpu"), None))
    again, _ = loader.decoded(splits, 16, tmp_path)  # second trial: read from the shared file
    assert torch.equal(again, images)
    assert len(list(tmp_path.glob("*.u8"))) == 1


def test_augmentation_runs_on_tensors() -> None:
    hp = ClassifierHParams(random_resized_crop=True, hflip=True, color_jitter=0.2, rotation=10)
    aug = loader.augmenter(hp, 16)
    x = loader.to_input(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8), torch.device("cpu"), aug)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()
    assert loader.augmenter(ClassifierHParams(), 16) is None


def test_non_finite_loss_stops_the_trial(tmp_path: Path) -> None:
    with pytest.raises(Diverged, match="non-finite training loss"):
        fit(tmp_path, {"epochs": 2, "lr": 1e30, "batch_size": 64, "optimizer": "adam"})


def test_imagenet_weights_load_offline_from_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"resnet18-f37072fd\.pth is not in .*hub/checkpoints"):
        build_model("resnet18", "imagenet", 5)
    import torchvision

    reference = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model, source = build_model("resnet18", "imagenet", 5)
    assert source == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.fc.out_features == 5


def test_weights_file_loads_and_bad_files_fail_clearly(tmp_path: Path) -> None:
    donor, _ = build_model("small_cnn", "none", 10)
    torch.save({"model_state": donor.state_dict()}, tmp_path / "w.pt")
    model, source = build_model("small_cnn", str(tmp_path / "w.pt"), 4)
    assert source.startswith("file:") and "#sha256=" in source
    assert torch.equal(model.features[0][0].weight, donor.features[0][0].weight)
    assert model.fc.out_features == 4  # the 10-class head did not fit and was left new
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot load"):
        build_model("small_cnn", str(tmp_path / "bad.pt"), 4)
    with pytest.raises(InputError, match="file not found"):
        build_model("small_cnn", str(tmp_path / "missing.pt"), 4)


def test_splits_are_stratified_disjoint_and_seeded() -> None:
    a = load_splits(ClassifierData.model_validate(DIGITS))
    b = load_splits(ClassifierData.model_validate(DIGITS))
    c = load_splits(ClassifierData.model_validate({**DIGITS, "seed": 1}))
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)
    parts = [set(a.train), set(a.val), set(a.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert np.bincount(a.labels[a.val]).min() >= 25


def test_preflight_refuses_missing_data_and_weights(tmp_path: Path) -> None:
    from trainers.classifier.preflight import preflight

    assert preflight(DIGITS, {"arch": "small_cnn"})["data.n_test"] == 360
    with pytest.raises(InputError, match="no 101_ObjectCategories folder"):
        preflight({"name": "caltech101", "root": str(tmp_path)}, {"arch": "resnet18"})
    with pytest.raises(InputError, match="model.weights: file not found"):
        preflight(DIGITS, {"arch": "small_cnn", "weights": str(tmp_path / "nope.pt")})


def test_weights_hparam_overrides_the_model_block(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    with pytest.raises(InputError, match="could not be downloaded"):
        fit(tmp_path, {"epochs": 1, "weights": "imagenet"}, model={"arch": "resnet18", "weights": "none"})


def memory_limited(model: torch.nn.Module, limit: int, sizes: list[int]) -> torch.nn.Module:
    """Make ``model`` raise the error CUDA raises when a training forward pass sees over ``limit`` images."""

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            sizes.append(len(args[0]))
            if len(args[0]) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.register_forward_pre_hook(hook)
    return model


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path: Path, monkeypatch) -> None:
    import trainers.classifier.trainer as trainer_module

    sizes: list[int] = []
    limit = {"images": 20}

    def limited(arch, weights, n):
        model, source = build_model(arch, weights, n)
        return memory_limited(model, limit["images"], sizes), source

    monkeypatch.setattr(trainer_module, "build_model", limited)
    result, reporter = fit(tmp_path, {"epochs": 2, "lr": 0.05, "batch_size": 64})
    assert reporter.info["oom.accumulate"] == 4 and reporter.info["oom.micro_batch"] == 16
    assert max(sizes[-50:]) <= 16  # after the retries every micro-batch fits
    assert max(m["val_top1"] for m in reporter.metrics) > 0.5  # and it still learns
    limit["images"] = 2
    with pytest.raises(torch.OutOfMemoryError):
        fit(tmp_path / "floor", {"epochs": 1, "batch_size": 64, "min_micro_batch": 4})


def test_accumulated_micro_batches_equal_one_full_batch() -> None:
    from trainers.classifier.engine import Precision, _step

    torch.manual_seed(0)
    images = torch.randint(0, 255, (32, 3, 16, 16), dtype=torch.uint8)
    target = torch.randint(0, 10, (32,))
    grads = []
    for steps in (1, 4):
        torch.manual_seed(1)
        model, _ = build_model("small_cnn", "none", 10)
        model.eval()  # BatchNorm statistics differ per micro-batch; the gradient sum must not
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        _step(
            model,
            images,
            target,
            opt,
            torch.nn.CrossEntropyLoss(),
            Precision(torch.device("cpu"), False),
            None,
            0.0,
            steps,
        )
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_head_only_epochs_then_unfreeze(tmp_path: Path) -> None:
    """Two-phase fine-tuning: epoch 1 trains only the head, epochs 2-3 the whole network."""
    import shutil

    states = []

    class Keep(ListReporter):
        def report(self, metrics, checkpoint_dir=None, info=None):
            super().report(metrics, checkpoint_dir, info)
            if metrics["epoch"] == 3:  # the last epoch's checkpoint holds no state (nothing resumes it)
                return
            kept = tmp_path / f"epoch{metrics['epoch']}"
            shutil.copytree(checkpoint_dir, kept)
            states.append(torch.load(kept / "state.pt", weights_only=True)["model"])

    torch.manual_seed(0)
    initial = build_model("small_cnn", "none", 10)[0].state_dict()
    hp = {"epochs": 3, "lr": 0.05, "batch_size": 64, "head_only_epochs": 1, "unfreeze": "all"}
    ClassifierTrainer().fit(TrialParams(DIGITS, {"arch": "small_cnn"}, hp, tmp_path / "w", threads=2), Keep())
    conv = "features.0.0.weight"
    assert torch.equal(states[0][conv], initial[conv])  # frozen during the head-only phase
    assert not torch.equal(states[0]["fc.weight"], initial["fc.weight"])
    assert not torch.equal(states[1][conv], states[0][conv])  # unfrozen afterwards
