"""`sweep report`: every figure of a classifier sweep's report exists, is a real picture, and the
self-contained HTML page shows them all in a real browser; the figures are logged to the parent run."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweep import store
from tests.conftest import browser_dom

pytestmark = pytest.mark.e2e
CLASSIFIER_FIGURES = ("curves", "history", "importances", "parallel", "confusion", "tsne")


def assert_pictures(folder: Path, name: str, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        with Image.open(folder / f"{name}_{kind}.png") as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300, (kind, image.size)
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 10, f"{kind} is blank"


def test_a_classifier_report_has_every_figure_and_reads_in_a_browser(demo_sweep, demo_reported, tmp_path: Path) -> None:
    spec, _, uri, _ = demo_sweep
    code, out = demo_reported
    assert code == 0
    assert_pictures(out, spec.name, CLASSIFIER_FIGURES)
    md = (out / "report.md").read_text()
    header, _, best = [line for line in md.split("## ")[1].splitlines() if line.startswith("|")][:3]
    cells = dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in best.split("|")), strict=True))
    assert 0.5 < float(cells["test_top1"]) <= 1  # in the first table of the first report: evaluate ran before it
    assert all(f"]({spec.name}_{kind}.png)" in md for kind in CLASSIFIER_FIGURES)
    assert "**Early stopping** (asha)" in md and "### Search space" in md and "```yaml" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(CLASSIFIER_FIGURES)  # self-contained
    dom = browser_dom((out / "report.html").as_uri(), tmp_path / "profile", timeout=120)
    assert len(re.findall(r"<img [^>]*src=\"data:image/png", dom)) == len(CLASSIFIER_FIGURES)
    assert "t-SNE map of the best model" in dom and "<table" in dom
    mlflow = store.client(uri)
    parent = store.parent_runs(mlflow, mlflow.get_experiment_by_name(spec.name).experiment_id, spec.name)[0]
    logged = {a.path for a in mlflow.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{spec.name}_{kind}.png" for kind in CLASSIFIER_FIGURES} <= logged


def test_pretrained_vs_scratch_figure(tmp_path: Path) -> None:
    """Drawn when the sweep searched ``weights``: the best trial of each choice, its curve per epoch."""
    from sweep import figures

    groups = {"imagenet": [(1, 0.71), (2, 0.83), (3, 0.86)], "none": [(1, 0.22), (2, 0.41), (3, 0.52)]}
    path = figures.grouped_curves(groups, "val_top1", "weights", tmp_path / "s_weights.png")
    assert_pictures(tmp_path, "s", ("weights",))
    assert path.name == "s_weights.png"


def test_a_description_is_text_in_the_html_report() -> None:
    import pandas as pd

    from sweep.report import Section, _html

    section = Section("s")
    section.text = ["<script>alert('x')</script> **bold**"]
    page = _html("c", pd.DataFrame({"a": [1]}), [section])
    assert "<script>" not in page and "&lt;script&gt;" in page and "<strong>bold</strong>" in page


def test_the_optimisation_history_names_trials_by_their_tnn(tmp_path: Path, monkeypatch) -> None:
    """Optuna numbers trials from 0; the report's history axis names them as every other surface does (t01…)."""
    import optuna

    from sweep import figures

    study = optuna.create_study(direction="maximize")
    for value in (0.2, 0.5, 0.4):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    figures.optuna_plot("optimization_history", study, tmp_path / "h.png", target_name="val_top1")
    (ax,) = drawn[0].axes[:1]
    drawn[0].canvas.draw()
    low, high = ax.get_xlim()
    labels = {t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high} - {""}
    assert labels and labels <= {"t01", "t02", "t03"} and ax.get_xlabel() == "trial", labels
