"""A sweep as a Ray cluster job: ``sweep submit`` sends it through Ray's Job Submission API (the head's dashboard
port, 8265), so the driver runs on the cluster and the user's laptop can close; ``sweep jobs``, ``sweep logs`` and
``sweep stop`` follow and end it.

The job uploads the current folder (the spec inside it, and any code of the user's; results, data, environments
and git history left out) and runs ``python -m sweep run SPEC --address auto`` there. Its driver keeps the sweep's
own records in ``--results`` on the cluster (default ``$SWEEP_RESULTS``, else ``~/sweep-results`` of the head),
where ``sweep submit --resume`` finds them again. Credentials (tracking server, object store, Ray token) are the
cluster's own environment: nothing secret travels with the job, whose description anyone with the dashboard
reads. ``sweep stop`` sends the driver SIGTERM, which it handles like Ctrl-C (trials stopped and checkpointed,
their runs marked KILLED), with time for that before Ray would kill it.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweep.errors import SweepError
from sweep.spec import Spec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "results",
    "data",
    "mlruns",
    "mlartifacts",
    "*.db",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    "*.pt",
    "*.pth",
]
"""What the job's upload leaves out: the cluster has its own data, environment and results."""
AGENT_WAIT_S = 60
"""How long ``submit`` retries a head whose job agent is still starting (right after ``ray start --head``)."""
STOP_GRACE_S = 120
"""How long Ray waits after ``sweep stop``'s SIGTERM before it kills the driver (its default is 3 s, too short for
Ray Tune to stop the trials and save its state)."""


@dataclass(frozen=True)
class Job:
    name: str
    """The submission id: ``<sweep>-<YYYYmmdd-HHMMSS>``."""
    sweep: str
    status: str
    started: str
    ended: str
    message: str


def address_of(address: str | None) -> str:
    """The job server: ``--address``, else ``RAY_ADDRESS`` when it is an http(s) URL (as Ray's job CLI reads it),
    else the local head's."""
    env = os.environ.get("RAY_ADDRESS", "")
    return address or (env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS)


def connect(address: str | None) -> Any:
    """A client of the head's job server, or one line saying why there is none."""
    from sweep.cluster import use_local_token

    url = address_of(address)
    if not url.startswith(("http://", "https://")):
        raise SweepError(f"--address {url}: expected the head's job server, http://HEAD:8265")
    use_local_token()
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # ray without its [default] extra
        raise SweepError(f"sweep submit needs ray[default] here ({e})") from None
    try:
        return JobSubmissionClient(url)
    except Exception as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "auth" in f"{type(e).__name__} {text}".lower():
            raise SweepError(
                f"--address {url}: the job server refused this machine: {text}; copy the head's ~/.ray/auth_token "
                "here or set RAY_AUTH_TOKEN"
            ) from None
        raise SweepError(
            f"--address {url}: no Ray job server answers there ({text}); the head serves it on its dashboard "
            "port (`ray start --head --dashboard-host 0.0.0.0`, with ray[default] installed)"
        ) from None


def entrypoint(spec_path: str, overrides: Sequence[str], resume: bool, results: str | None) -> str:
    """The job's shell command on the cluster."""
    cmd = ["python", "-m", "sweep", "run", spec_path, "--address", "auto"]
    for override in overrides:
        cmd += ["--set", override]
    if resume:
        cmd.append("--resume")
    where = shlex.quote(results) if results else '"${SWEEP_RESULTS:-$HOME/sweep-results}"'
    return f"{shlex.join(cmd)} --results {where}"


def submit(
    spec: Spec,
    spec_path: Path,
    overrides: Sequence[str],
    address: str | None,
    resume: bool = False,
    results: str | None = None,
    workdir: Path = Path("."),
) -> str:
    """Send the sweep to the cluster; returns the job's name. Refused here, before anything is uploaded, when it
    could not work there."""
    uri = spec.tracking.uri or ""
    remote = "://" in uri and not uri.startswith(("sqlite:", "file:"))
    if not remote and not (uri and Path(uri.removeprefix("sqlite:///").removeprefix("file://")).is_absolute()):
        raise SweepError(
            "tracking.uri: a submitted sweep runs on the cluster, where the default ./mlruns.db would stay in the "
            "job's temporary folder; give the team's tracking server (http://…) or an absolute path on the cluster"
        )
    if "@" in urlparse(uri).netloc:
        raise SweepError(
            "tracking.uri: holds credentials, which a job's command and files show to everyone with the dashboard; "
            "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the cluster's environment instead"
        )
    workdir = workdir.resolve()
    try:
        relative = spec_path.resolve().relative_to(workdir)
    except ValueError:
        raise SweepError(
            f"{spec_path}: the spec must be inside the current folder {workdir}, which is uploaded as the job's "
            "working folder"
        ) from None
    client = connect(address)
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runtime_env = {
        "working_dir": str(workdir),
        "excludes": UPLOAD_EXCLUDES,
        "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), "PYTHONUNBUFFERED": "1"},
    }
    metadata = {"sweep": spec.name, "spec": str(relative), "user": getpass.getuser(), "resume": str(resume).lower()}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return str(
                client.submit_job(
                    entrypoint=entrypoint(str(relative), overrides, resume, results),
                    submission_id=name,
                    runtime_env=runtime_env,
                    metadata=metadata,
                )
            )
        except Exception as e:
            text = str(e).strip().splitlines()[0][:300]
            if "No available agent" in text and time.monotonic() < deadline:
                time.sleep(1)  # a head that just started: its dashboard agent is still coming up
                continue
            raise SweepError(f"submit: the job server refused the job: {text}") from None


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def jobs(address: str | None) -> list[Job]:
    """The cluster's sweep jobs, oldest first."""
    client = connect(address)
    found = [j for j in client.list_jobs() if (j.metadata or {}).get("sweep") and j.submission_id]
    found.sort(key=lambda j: j.start_time or 0)
    return [
        Job(
            j.submission_id,
            j.metadata["sweep"],
            str(j.status.value if hasattr(j.status, "value") else j.status),
            _when(j.start_time),
            _when(j.end_time),
            (j.message or "").strip().splitlines()[0][:120] if j.message else "",
        )
        for j in found
    ]


def find(address: str | None, name: str) -> str:
    """A job by its name, or the newest job of the sweep ``name``."""
    known = jobs(address)
    exact = [j for j in known if j.name == name]
    if exact:
        return exact[0].name
    of_sweep = [j for j in known if j.sweep == name]
    if not of_sweep:
        names = ", ".join(j.name for j in known[-5:]) or "none"
        raise SweepError(f"no job or sweep named '{name}' on {address_of(address)} (latest jobs: {names})")
    return of_sweep[-1].name


def logs(address: str | None, name: str, follow: bool) -> str:
    """Print the job's output (with ``follow``, as it comes, until the job ends); returns its status."""
    client = connect(address)
    job = find(address, name)
    if not follow:
        sys.stdout.write(client.get_job_logs(job))
        return str(client.get_job_status(job).value)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return _final_status(client, job, 30)


def stop(address: str | None, name: str, wait_s: float = STOP_GRACE_S + 30) -> tuple[str, str]:
    """Stop the job (its driver stops the trials and saves the sweep) and wait for it to end; returns its name and
    final status."""
    client = connect(address)
    job = find(address, name)
    if client.get_job_status(job).is_terminal():
        raise SweepError(f"{job} already ended ({client.get_job_status(job).value}); nothing to stop")
    client.stop_job(job)
    return job, _final_status(client, job, wait_s)


def _final_status(client: Any, job: str, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        status = client.get_job_status(job)
        if status.is_terminal() or time.monotonic() > deadline:
            return str(status.value)
        time.sleep(0.5)
