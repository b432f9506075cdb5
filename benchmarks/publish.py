"""What the benchmark scripts share: `sweep run` of the demo spec with overrides, and their ending — their section
of benchmarks/RESULTS.md, printed and, with ``--out``, appended to the file, headed by the command and the machine
it was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine(detail: str) -> str:
    return f"Machine: {platform.machine()}, {os.cpu_count()} cores, {detail}; {time.strftime('%Y-%m-%d')}."


def publish(title: str, command: str, machine_line: str, body: Sequence[str], out: Path | None) -> None:
    text = "\n".join(["", f"## {title}", "", f"Command: `{command}`", "", machine_line, "", *body])
    print(text)
    if out:
        with out.open("a") as f:
            f.write(text + "\n")


def demo_sweep(overrides: Sequence[str], cwd: Path, runner: Sequence[str] = ("sweep",)) -> str:
    """``python -m sweep run search_spaces/demo.yaml --set ...`` in ``cwd`` (``runner`` may name another module that
    takes the CLI's arguments, e.g. ``benchmarks.phases MARKS``); returns its output."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            *runner,
            "run",
            str(ROOT / "search_spaces" / "demo.yaml"),
            *[a for o in overrides for a in ("--set", o)],
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return done.stdout
