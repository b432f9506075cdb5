"""``sweep report NAME [NAME…] -o DIR``: a report folder made from what MLflow, the study and the best
checkpoint hold — ``report.md`` (figures beside it) and ``report.html`` (self-contained, figures embedded):
the tables across sweeps, each sweep's spec, search space, best configuration, what early stopping saved,
and its figures. The figures are also logged to each sweep's parent run (``report/``)."""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweep import figures, records, store
from sweep.errors import SweepError
from sweep.evaluate import best_trial, detect_best, evaluate_best
from sweep.export import SweepTable, compare, load_table, locate_uri, render
from sweep.record import load_record
from sweep.spec import Spec
from sweep.study import study_storage
from sweep.tags import TRIAL_ID

TOP_CURVES = 5
PICTURE_SCORE = 0.15


@dataclass
class Section:
    name: str
    text: list[str] = field(default_factory=list)
    """Markdown paragraphs and tables."""
    figures: list[tuple[Path, str]] = field(default_factory=list)
    """(PNG, caption)."""


def build(names: list[str], results: Path, out: Path, tracking_uri: str | None = None) -> Path:
    """Write the report folder ``out``; return ``out/report.html``. Every sweep is found before anything is
    written."""
    specs = {name: load_record(name, results).parsed() for name in names}
    uris = {name: locate_uri(name, results, tracking_uri) for name in names}
    tables = [load_table(name, uris[name], keys=["weights"], optional=True) for name in names]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".written").touch()
        (out / ".written").unlink()
    except OSError as e:
        raise SweepError(f"-o: cannot write the report folder {out}: {e.strerror or e}") from None
    for i, name in enumerate(names):  # `sweep evaluate` first where it has not run: every table holds the test score
        if specs[name].entry.has("evaluate") and not (results / name / "test").is_dir():
            evaluate_best(name, results, uris[name])
            tables[i] = load_table(name, uris[name], keys=["weights"], optional=True)
    sections = []
    for name, table in zip(names, tables, strict=True):
        uri = uris[name]
        section = _section(name, specs[name], table, uri, results, out)
        sections.append(section)
        _log(uri, table.parent_id, section, out)
    top = compare(tables).drop(columns=["weights"], errors="ignore")
    caption = f"Best trial of each sweep: {', '.join(names)}" if len(names) > 1 else f"Best trials of {names[0]}"
    overview = render(top if len(names) > 1 else tables[0].frame.head(10).drop(columns="weights"), "md")
    md = [f"# Sweep report: {', '.join(names)}", "", f"## {caption}", "", overview, ""]
    for s in sections:
        md += [f"## {s.name}", "", *s.text]
        md += [f"![{cap}]({path.name})\n\n*{cap}*\n" for path, cap in s.figures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(_html(caption, top if len(names) > 1 else tables[0].frame.head(10), sections))
    return out / "report.html"


def _section(name: str, spec: Spec, table: SweepTable, uri: str, results: Path, out: Path) -> Section:
    client = store.client(uri)
    parent = client.get_run(table.parent_id)
    section = Section(name)
    best = table.frame.iloc[0]
    params = ", ".join(f"`{p}={records.short_value(best[p])}`" for p in table.searched if pd.notna(best[p]))
    ran, full = parent.data.metrics.get("epochs_run"), parent.data.metrics.get("epochs_full")
    stopped = int(parent.data.metrics.get("trials_stopped_early", 0))
    section.text += [
        spec.description or "",
        f"**Best configuration** (trial {best['run']}, {table.metric} {table.mode}): {params} → "
        f"**{best[table.metric]:.4f}** after {int(best['epochs'])} epochs.",
        "",
    ]
    if ran and full:
        section.text.append(
            f"**Early stopping** ({spec.scheduler.name}) ended {stopped} of {len(table.frame)} trials before their "
            f"last epoch: {int(ran)} of {int(full)} epochs run, {1 - ran / full:.0%} of the compute saved."
        )
    section.text += ["", "### Trials", "", render(table.frame.drop(columns="weights").head(20), "md"), ""]
    section.text += ["### Search space", "", records.space_table(spec.search), ""]
    section.text += ["### Spec", "", "```yaml", yaml.safe_dump(dict(spec.raw), sort_keys=False).strip(), "```", ""]
    prefix = out / name
    section.figures += _curves(client, table, prefix)
    section.figures += _study_figures(name, results, table, prefix)
    section.figures += _trainer_figures(name, spec, results, uri, prefix)
    return section


def _histories(client: Any, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def _run_ids(client: Any, table: SweepTable) -> dict[str, str]:
    exp = client.get_run(table.parent_id).info.experiment_id
    runs = store.trial_runs(client, exp, table.parent_id)
    return {r.data.tags.get(TRIAL_ID, ""): r.info.run_id for r in runs}


def _curves(client: Any, table: SweepTable, prefix: Path) -> list[tuple[Path, str]]:
    ids = _run_ids(client, table)
    top = table.frame.dropna(subset=[table.metric]).head(TOP_CURVES)
    series = {
        f"{row['run']} ({row[table.metric]:.3f})": _histories(
            client, ids[row["trial"]], [table.metric, "train_loss", "val_loss"]
        )
        for _, row in top.iterrows()
    }
    shown = [
        (
            figures.curves(series, table.metric, Path(f"{prefix}_curves.png")),
            f"{table.metric} and loss per epoch of the best {len(series)} trials",
        )
    ]
    if "weights" in table.frame and table.frame["weights"].nunique() > 1:  # pretrained vs scratch was searched
        best = table.frame.groupby("weights", sort=False).head(1)
        groups = {
            str(row["weights"]): _histories(client, ids[row["trial"]], [table.metric])[table.metric]
            for _, row in best.iterrows()
        }
        path = figures.grouped_curves(groups, table.metric, "weights", Path(f"{prefix}_weights.png"))
        shown.append((path, f"pretrained vs scratch: the best trial of each weights choice, {table.metric} per epoch"))
    return shown


def _study_figures(name: str, results: Path, table: SweepTable, prefix: Path) -> list[tuple[Path, str]]:
    import optuna

    from sweep.study import open_storage

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(study_storage(name, results)))
    except (SweepError, KeyError):
        return []
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return []
    multi = len(study.directions) > 1
    target = (
        {"target": (lambda t: t.values[0]), "target_name": table.metric} if multi else {"target_name": table.metric}
    )
    shown = []
    if multi:
        path = figures.optuna_plot("pareto_front", study, Path(f"{prefix}_pareto.png"))
        shown.append((path, "Pareto front of the objectives (each trial at its best epoch)"))
    else:
        path = figures.optuna_plot("optimization_history", study, Path(f"{prefix}_history.png"), **target)
        shown.append((path, f"optimisation history: {table.metric} of each trial in the order they ran, best so far"))
    varied = [p for p in table.searched if table.frame[p].nunique(dropna=True) > 1]
    if varied:
        path = figures.optuna_plot("param_importances", study, Path(f"{prefix}_importances.png"), **target)
        shown.append((path, f"parameter importances for {table.metric} (Optuna's fANOVA evaluator)"))
        path = figures.optuna_plot("parallel_coordinate", study, Path(f"{prefix}_parallel.png"), **target)
        shown.append((path, "parallel coordinates: each line a trial, coloured by its value"))
    return shown


def _trainer_figures(name: str, spec: Spec, results: Path, uri: str, prefix: Path) -> list[tuple[Path, str]]:
    """The best model on the test part, from what ``sweep evaluate`` wrote (:func:`build` runs it) and what its
    trainer can do (its registry entry says): the confusion matrix and per-class AP tables drawn, a t-SNE map of
    its features, its detections on test pictures (beside the first stage's proposals, where it has them)."""
    entry = spec.entry
    if not entry.has("evaluate"):
        return []
    test, shown = results / name / "test", []
    if (test / "confusion.csv").is_file():
        confusion = pd.read_csv(test / "confusion.csv", index_col=0)
        path = figures.confusion(confusion.to_numpy(), list(confusion.columns), Path(f"{prefix}_confusion.png"))
        shown.append((path, "confusion matrix of the best trial on the test part (rows: true class)"))
    if (test / "per_class_ap.csv").is_file():
        rows = pd.read_csv(test / "per_class_ap.csv").to_dict("records")
        path = figures.per_class_ap(rows, "ap50", Path(f"{prefix}_per_class_ap.png"))
        shown.append((path, "per-class AP@0.5 (VOC) of the best detector on the test part"))
    if entry.has("features"):
        best = best_trial(name, results, uri)
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(best.client.download_artifacts(best.run_id, f"checkpoints/{entry.weights_file}", tmp))
            feats, labels, classes = entry.capability("features")(
                weights, spec.dataset.model_dump(), results / name / "cache"
            )
        path = figures.tsne(feats, labels, classes, Path(f"{prefix}_tsne.png"))
        shown.append((path, "t-SNE map of the best model's penultimate-layer features on the test part, by class"))
    if entry.has("detect") and entry.has("test_pictures"):
        shown.append(_pictures(name, spec, results, uri, prefix))
    return shown


def _pictures(name: str, spec: Spec, results: Path, uri: str, prefix: Path) -> tuple[Path, str]:
    """The best detector's predictions on three test pictures, as one page (beside its proposals, if it has)."""
    proposals = spec.entry.proposals
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for image in spec.entry.capability("test_pictures")(spec.dataset.model_dump(), 3):
            (folder / image.name).symlink_to(image.resolve())
        drawn = detect_best(name, results, uri, folder, Path(tmp) / "out", proposals, PICTURE_SCORE, top_k=30)
        pages = [p for p in drawn if p.stem.endswith("_proposals")] if proposals else drawn
        title = "first-stage proposals (left, cyan) and final predictions (right)" if proposals else "predictions"
        names = [p.stem.removesuffix("_proposals") for p in pages]
        path = figures.page(pages, names, title, Path(f"{prefix}_{'proposals' if proposals else 'predictions'}.png"))
    said = "top-30 RPN proposals beside the final predictions" if proposals else "the best model's predictions"
    return path, f"{said} scoring ≥ {PICTURE_SCORE} on test images"


def _log(uri: str, parent_id: str, section: Section, out: Path) -> None:
    client = store.client(uri)
    with store.as_ended(client, parent_id):
        for path, _ in section.figures:
            client.log_artifact(parent_id, str(path), artifact_path="report")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}caption{font-weight:600;margin-bottom:.4em}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:14px}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"""


def _html(caption: str, top: pd.DataFrame, sections: list[Section]) -> str:
    import markdown_it

    md = markdown_it.MarkdownIt("commonmark", {"html": False}).enable("table")  # a description is text, never markup
    body = ["<h1>Sweep report</h1>", render(top.drop(columns="weights", errors="ignore"), "html", caption=caption)]
    for s in sections:
        body.append(f"<h2>{html.escape(s.name)}</h2>")
        body.append(md.render("\n".join(s.text)))
        for path, cap in s.figures:
            data, alt = base64.b64encode(path.read_bytes()).decode(), html.escape(cap)
            img = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
            body.append(f"<figure>{img}<figcaption>{alt}</figcaption></figure>")
    head = f"<meta charset='utf-8'><title>{html.escape(caption)}</title><style>{CSS}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
