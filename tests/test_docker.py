"""Docker has no engine here: check the deployment files statically against the repository."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_copies_what_exists_and_installs_the_package() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        assert all((ROOT / s).exists() for s in sources), line
    assert "pip install '.[server]'" in text and 'ENTRYPOINT ["sweep"]' in text


def test_compose_services_fit_together() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker", "driver"}
    mlflow = " ".join(services["mlflow"]["command"].split())
    # The same server command the tests run against PostgreSQL (tests/sweep/test_tracking_server.py).
    assert "--backend-store-uri postgresql+psycopg2://mlflow:" in mlflow and "@postgres:5432/mlflow" in mlflow
    assert "--serve-artifacts" in mlflow and "--artifacts-destination /artifacts" in mlflow
    assert services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    for name in ("ray-head", "ray-worker", "driver"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(compose["volumes"])
    assert "${MLFLOW_DB_PASSWORD" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]  # no secret inline
