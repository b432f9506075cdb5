"""A driver joining a Ray cluster by the head's HOST:PORT, as one on another machine does, with Ray 2.60's token
authentication (``ray start --head`` turns it on and writes ``~/.ray/auth_token``). The head is started and stopped
here, with its own home folder (its token) and temp folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.sweep.conftest import ROOT
from tests.sweep.test_tracking_server import free_port

RAY = str(Path(sys.executable).parent / "ray")
DEMO = str(ROOT / "search_spaces" / "demo.yaml")
SMALL = [
    "budget.trials=2",
    "budget.max_concurrent=2",
    "fixed.epochs=1",
    "dataset.image_size=12",
    "model.arch=small_cnn",
]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on 127.0.0.1 (3 CPUs: this machine has 2, so a sweep that joined it says 3) and the home folder
    holding its token."""
    home = tmp_path_factory.mktemp("head-home")
    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = {**os.environ, "HOME": str(home)}
    # a head that has a token (here generated; on a workstation, left by an earlier local ray.init) turns Ray's
    # token authentication on, and a driver given its address must present that token
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=3",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(2)  # the raylet registers after the GCS answers
    yield port, home
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def sweep(home: Path, cwd: Path, address: str, name: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep",
            "run",
            DEMO,
            "--address",
            address,
            "--set",
            f"name={name}",
            *[a for s in SMALL for a in ("--set", s)],
        ],
        cwd=cwd,
        env={**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def test_a_sweep_joins_the_head_by_host_and_port_with_its_token(head, tmp_path: Path) -> None:
    port, home = head
    assert (home / ".ray" / "auth_token").is_file()
    code, out, err, _ = sweep(home, tmp_path, f"127.0.0.1:{port}", "joined")
    assert code == 0, err
    assert f"joined the Ray cluster at 127.0.0.1:{port}: 1 node, 3 CPUs" in out  # the head's, not a new local one
    assert "2 trials · 2 completed" in out, out


def test_refused_connections_are_one_line_and_quick(head, tmp_path: Path) -> None:
    port, _ = head
    stranger = tmp_path / "no-token-home"
    stranger.mkdir()
    code, _, err, took = sweep(stranger, tmp_path, f"127.0.0.1:{port}", "no-token")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert (
        f"--address 127.0.0.1:{port}" in err and "auth_token" in err and took < 60
    )  # Ray alone: 20 s, then a traceback
    code, _, err, took = sweep(stranger, tmp_path, f"127.0.0.1:{free_port()}", "no-head")
    assert code == 2 and err.count("\n") == 1 and "nothing answers there" in err and "ray start --head" in err, err
    assert not (tmp_path / "results" / "no-head").exists()  # refused before anything was written
