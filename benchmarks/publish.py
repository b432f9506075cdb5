"""What every benchmark script ends with: its section of benchmarks/RESULTS.md, printed and, with ``--out``,
appended to the file, headed by the command and the machine it was measured on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path


def machine(detail: str) -> str:
    return f"Machine: {platform.machine()}, {os.cpu_count()} cores, {detail}; {time.strftime('%Y-%m-%d')}."


def publish(title: str, command: str, machine_line: str, body: Sequence[str], out: Path | None) -> None:
    text = "\n".join(["", f"## {title}", "", f"Command: `{command}`", "", machine_line, "", *body])
    print(text)
    if out:
        with out.open("a") as f:
            f.write(text + "\n")
