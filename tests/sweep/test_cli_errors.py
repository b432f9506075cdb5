"""What a user sees when something is wrong: one line, the right exit code, nothing started or written.

Each case runs the real CLI (``sweep.cli.main``) in this process, as a user's command would."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sweep.cli import main
from sweep.record import SweepRecord
from tests.conftest import free_port
from tests.sweep.conftest import ROOT
from trainers.classifier.config import ClassifierData

DEMO = str(ROOT / "search_spaces" / "demo.yaml")


def sweep(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_spec_mistakes_are_one_line_each(tmp_path: Path, capsys) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in one_line(sweep(capsys, "validate", str(latin1))[2])
    code, _, err = sweep(capsys, "validate", DEMO, "--set", "fixed.epochs=[")
    assert code == 2 and "--set fixed.epochs=[: the value is line 1, column 2: not valid YAML" in one_line(err)
    for command in ("validate", "run"):
        code, _, err = sweep(capsys, command, DEMO, "--set", "metric.name=[]")
        assert code == 2 and "metric.name: name a metric" in one_line(err)
    twice = tmp_path / "twice.yaml"
    twice.write_text((ROOT / "search_spaces" / "demo.yaml").read_text() + "seed: 3\nseed: 4\n")
    code, _, err = sweep(capsys, "validate", str(twice))
    assert code == 2 and "key 'seed' appears twice in one mapping" in one_line(err)


def test_home_is_expanded_in_data_paths(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ClassifierData(name="imagefolder", root="~/pets").root == str(tmp_path / "pets")


def test_paths_stores_and_commands_that_cannot_work(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = sweep(capsys, "run", DEMO, "--results", "/proc/x")
    assert code == 2 and "--results: cannot create /proc/x/digits-demo" in one_line(err)
    code, _, err = sweep(capsys, "run", DEMO, "--set", "tracking.uri=mysql://u:hunter2@127.0.0.1/x")
    assert code == 2 and "needs the Python package 'MySQLdb'" in one_line(err) and "hunter2" not in err
    code, _, err = sweep(capsys, "ui", "--tracking-uri", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert code == 2 and "tracking.uri: cannot reach http://127.0.0.1:" in one_line(err)
    with pytest.raises(SystemExit) as exit_code:
        main(["ui", "--port", "99999"])
    assert exit_code.value.code == 2 and "expected a port number from 1 to 65535, got 99999" in capsys.readouterr().err
    code, _, err = sweep(capsys, "ui", "--host", "no-such-host.invalid", "--tracking-uri", "sqlite:///x.db")
    assert code == 2 and "--host no-such-host.invalid: not an address of this machine" in one_line(err)
    for top in ("-3", "0"):
        with pytest.raises(SystemExit) as exit_code:
            main(["export", "x", "--top", top])
        refused = capsys.readouterr().err
        assert exit_code.value.code == 2 and f"expected a whole number of at least 1, got {top}" in refused
    code, _, err = sweep(capsys, "status", "nothing-here")
    assert code == 2 and "no tracking store at" in one_line(err) and not (tmp_path / "mlruns.db").exists()
    record = tmp_path / "results" / "yolo" / "sweep.json"
    record.parent.mkdir(parents=True)
    mmdet_spec = yaml.safe_load((ROOT / "search_spaces" / "yolov3.yaml").read_text())
    SweepRecord("run-id", "1", "digest", "", None, mmdet_spec).write(record.parent)
    code, _, err = sweep(capsys, "evaluate", "yolo")
    assert code == 2 and "no sweep named 'yolo'" in one_line(err)  # the record without its runs
    assert not list(tmp_path.glob("results/digits-demo/*"))


def test_a_sweep_that_is_not_there_names_the_ones_that_are(tmp_path: Path, capsys, monkeypatch) -> None:
    """Every command that reads a sweep's record (``results/NAME/sweep.json``) says the same thing when it is not
    there, naming the sweeps that are; a record that is not one (hand-edited, cut short) is one line naming it."""
    monkeypatch.chdir(tmp_path)
    commands = [["evaluate"], ["promote"], ["rerun", "--top", "1", "--seeds", "2"], ["dashboard"], ["tensorboard"]]
    commands += [["report", "-o", "r"]]
    for argv in commands:
        code, _, err = sweep(capsys, argv[0], "nosuch", *argv[1:])
        assert code == 2 and "no sweep 'nosuch' in results: no sweep has run there" in one_line(err), argv
    spec = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    for name in ("cub-r50", "voc-frcnn"):
        (tmp_path / "results" / name).mkdir(parents=True)
        SweepRecord("run-id", "1", "digest", "", None, spec).write(tmp_path / "results" / name)
    (tmp_path / "results" / "half").mkdir()
    (tmp_path / "results" / "half" / "sweep.json").write_text('{"parent_run_id": "x", "spec":')
    for argv in commands:
        code, _, err = sweep(capsys, argv[0], "cub-r5", *argv[1:])
        assert code == 2 and "no sweep 'cub-r5' in results: the sweeps there are cub-r50, half, voc-frcnn" in err
        one_line(err)
    code, _, err = sweep(capsys, "evaluate", "half")
    assert code == 2 and "results/half/sweep.json: not a sweep record (Expecting value" in one_line(err)
    (tmp_path / "results" / "half" / "tracking-pending.jsonl").write_text("")
    code, _, err = sweep(capsys, "sync", "half")
    assert code == 2 and "results/half/sweep.json: not a sweep record" in one_line(err)


def folder_of_classes(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_data_and_weights_are_refused_before_any_trial(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    one = folder_of_classes(tmp_path / "one", {"cat": 6})
    code, _, err = sweep(capsys, "run", DEMO, "--set", "dataset={name: imagefolder, root: " + str(one) + "}")
    assert code == 2 and "one class only ('cat')" in one_line(err)
    empty = folder_of_classes(tmp_path / "empty", {"cat": 6, "dog": 6, "owl": 0})
    code, _, err = sweep(capsys, "run", DEMO, "--set", "dataset={name: imagefolder, root: " + str(empty) + "}")
    assert code == 2 and "1 class folder without training images" in one_line(err) and "'owl'" in err
    code, _, err = sweep(capsys, "run", DEMO, "--set", "model={arch: resnet18, weights: imagenet}")
    assert code == 2 and "resnet18-f37072fd.pth is not in" in one_line(err) and "could not be downloaded" in err
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = sweep(capsys, "run", DEMO, "--set", f"model.weights={tmp_path / 'random.pt'}")
    assert code == 2 and "cannot load" in one_line(err)
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns.db").exists()


@pytest.mark.e2e
def test_what_the_cluster_can_never_place_is_refused(tmp_path: Path, capsys, monkeypatch, ray_session) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = sweep(capsys, "run", DEMO, "--set", "resources.cpus_per_trial=64")
    assert code == 2 and "resources.cpus_per_trial: 64 per trial, but the Ray cluster has" in one_line(err)
    assert not (tmp_path / "results" / "digits-demo" / "tune").exists()


def test_commands_that_read_the_store_do_not_import_ray(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from sweep.cli import main; "
        "codes = [main(['status', 'x']), main(['export', 'x']), main(['sync', 'x'])]; "
        "print(codes, 'ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[2, 2, 0] False", done.stdout + done.stderr


def test_storage_and_cluster_jobs_that_cannot_work(tmp_path: Path, capsys, monkeypatch) -> None:
    """Refused here in one line, before anything is uploaded or started: a storage URI of an unknown kind, a
    submitted sweep whose tracking would stay in the job's temporary folder or shows a password, a spec outside the
    uploaded folder, a job server that is not there; a local shared storage path that cannot be written."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "demo.yaml"
    spec.write_text(Path(DEMO).read_text())
    cases = [
        (("run", DEMO, "--storage", "gs://bucket/x"), "storage.uri: expected a path or s3://bucket/prefix"),
        (("run", DEMO, "--storage", "/proc/no/such"), "storage /proc/no/such/digits-demo: cannot write there"),
        (("submit", "demo.yaml"), "tracking.uri: a submitted sweep runs on the cluster"),
        (("submit", "demo.yaml", "--set", "tracking.uri=http://me:pw@mlflow:5000"), "holds credentials"),
        (("submit", DEMO, "--set", "tracking.uri=http://mlflow:5000"), "must be inside the current folder"),
        (
            ("submit", "demo.yaml", "--set", "tracking.uri=http://mlflow:5000", "--address", "http://127.0.0.1:9"),
            "no Ray job server answers there",
        ),
        (("jobs", "--address", "127.0.0.1:6379"), "expected the head's job server, http://HEAD:8265"),
    ]
    for argv, words in cases:
        code, out, err = sweep(capsys, *argv)
        assert code == 2 and words in one_line(err), (argv, err)
    assert not (tmp_path / "results").exists()


def test_a_trial_given_a_gpu_it_cannot_use_fails_with_its_node() -> None:
    from sweep.tags import NODE_ID
    from sweep.trial import gpu_problem

    node = {NODE_ID: "4f3c2a1b0e9d8c7b", "sweep.host": "gpu-07"}
    problem = gpu_problem(["0"], node, cuda=False)
    assert problem and "GPU 0 on gpu-07 (Ray node 4f3c2a1b0e9d)" in problem and "CUDA is not usable" in problem
    assert gpu_problem(["0", "1"], node, cuda=True) is None


def test_every_help_text_renders_and_the_version_is_the_installed_one(capsys) -> None:
    from importlib.metadata import version

    from sweep.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "status", "export", "rerun", "report", "promote", "sync"} <= set(commands)
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv
        out, err = capsys.readouterr()
        assert out.startswith(f"usage: sweep {argv[0] if len(argv) > 1 else ''}") and not err, argv
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "{md,latex,html,csv,json}" in capsys.readouterr().out  # the choices are the format registry's
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"sweep {version('sweep')}\n"
