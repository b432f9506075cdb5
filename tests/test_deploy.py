"""The deployment files, checked with the real tools that install here (no Docker engine, no Kubernetes): hadolint
on every Dockerfile, ``docker-compose config`` on the compose file with the example environment, and what the
team setup needs of them — one CUDA stack, no root, the same mounts on the driver and every Ray node, secrets
only from the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
SWEEP_NODES = ("ray-head", "ray-worker", "driver")
MOUNTS = {"/app/data", "/cache", "/app/results"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run(
        [str(hadolint), "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists(dockerfile: Path) -> None:
    for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M):
        *sources, _dest = [w for w in line.split() if not w.startswith("--")]
        assert all((ROOT / s).exists() for s in sources), line


def test_images_run_as_a_user_on_one_cuda_stack_and_record_their_commit() -> None:
    for dockerfile in DOCKERFILES:
        users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
        assert users and users[-1] == "1000:1000", dockerfile.name  # ends as the unprivileged user
    sweep = (DOCKER / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in sweep and "nvidia/cuda" not in sweep  # CUDA comes with torch's wheels only
    assert "SWEEP_GIT_COMMIT=${GIT_COMMIT}" in sweep
    mlflow = (DOCKER / "mlflow.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in mlflow and "sweep" not in mlflow.split("FROM", 1)[1].split("\n")[0]


def compose() -> dict:
    """The compose file as ``docker-compose config`` resolves it with the example environment file."""
    env = DOCKER / ".env.example"
    tool = need("docker-compose", "apt-get install docker-compose; .ci/run installs it")
    done = subprocess.run(
        [tool, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), "config"],
        capture_output=True,
        text=True,
        cwd=DOCKER,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")},  # only the env file's values
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_resolves_and_mounts_the_same_paths_on_driver_and_workers() -> None:
    services = compose()["services"]
    for name in SWEEP_NODES:
        service = services[name]
        targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}
        assert targets >= MOUNTS, (name, targets)
        env = service["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["RAY_AUTH_MODE"] == "token"
        assert env["MLFLOW_TRACKING_PASSWORD"] == "change-me"  # from the env file, not written in compose.yaml
    assert services["driver"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    mlflow = services["mlflow"]
    assert mlflow["image"].startswith("sweep-mlflow") and "--app-name=basic-auth" in mlflow["command"]
    text = (DOCKER / "compose.yaml").read_text()
    assert "change-me" not in text and "password1234" not in text  # no secret in the file itself


def test_the_rayjob_runs_a_shipped_spec_with_secrets_from_kubernetes(cli) -> None:
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    command = job["spec"]["entrypoint"].split()
    assert command[:2] == ["sweep", "run"] and (ROOT / command[2]).is_file()
    done = cli("validate", command[2], cwd=ROOT)
    assert done.returncode == 0, done
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *[g["template"] for g in cluster["workerGroupSpecs"]]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
        for container in pod["spec"]["containers"]:
            assert {m["mountPath"] for m in container["volumeMounts"]} >= MOUNTS
            for var in container["env"]:
                if "PASSWORD" in var["name"] or "TOKEN" in var["name"]:
                    assert "valueFrom" in var and "value" not in var, var
