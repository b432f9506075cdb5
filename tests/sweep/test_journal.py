"""The journal's background writer: Tune's event loop only queues; one thread delivers in order, keeps what it
cannot deliver on disk, and an artifact survives the checkpoint folder it came from."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from sweep.journal import Journal


class Writer:
    """Records what it applies; ``down`` makes every write fail as an unreachable store does."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.applied: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.down = False
        self.delay_s = delay_s

    def apply(self, op: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        time.sleep(self.delay_s)
        if op["op"] == "artifact":
            op = {**op, "content": Path(op["path"]).read_text()}
        self.applied.append(op)
        self.threads.add(threading.current_thread().name)


def test_submit_returns_at_once_and_the_thread_delivers_in_order(tmp_path: Path) -> None:
    writer = Writer(delay_s=0.01)  # a slow store: 50 writes take half a second
    journal = Journal(writer, tmp_path / "pending.jsonl").start()  # type: ignore[arg-type]
    start = time.perf_counter()
    for i in range(50):
        journal.submit({"op": "metrics", "trial": "t", "step": i})
    queued = time.perf_counter() - start
    assert queued < 0.25  # the caller never waited for the 50 writes
    assert journal.drain(10)
    assert [op["step"] for op in writer.applied] == list(range(50))
    assert writer.threads == {"sweep-tracking"}
    assert not (tmp_path / "pending.jsonl").exists()


def test_an_artifact_outlives_its_checkpoint_folder(tmp_path: Path) -> None:
    """Ray recycles a checkpoint folder as soon as the next one is persisted; the queued upload still has the file."""
    writer = Writer()
    writer.down = True
    journal = Journal(writer, tmp_path / "pending.jsonl", retry_every_s=0.05).start()  # type: ignore[arg-type]
    ckpt = tmp_path / "checkpoint_000001"
    ckpt.mkdir()
    (ckpt / "best.pt").write_text("weights of epoch 1")
    journal.submit({"op": "artifact", "trial": "t", "step": 1, "path": str(ckpt / "best.pt"), "artifact_path": "c"})
    (ckpt / "best.pt").unlink()
    ckpt.rmdir()
    writer.down = False
    assert journal.drain(5)
    assert writer.applied[0]["content"] == "weights of epoch 1"
    assert not list((tmp_path / "pending.files").rglob("*.pt"))  # delivered, then removed


def test_what_an_unreachable_store_did_not_take_is_on_disk_in_order(tmp_path: Path) -> None:
    writer = Writer()
    journal = Journal(writer, tmp_path / "pending.jsonl", retry_every_s=0.05).start()  # type: ignore[arg-type]
    journal.submit({"op": "metrics", "trial": "t", "step": 1})
    deadline = time.monotonic() + 5
    while not writer.applied and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.down = True
    for step in (2, 3, 4):
        journal.submit({"op": "metrics", "trial": "t", "step": step})
    assert not journal.drain(0.3)
    kept = [json.loads(line)["step"] for line in (tmp_path / "pending.jsonl").read_text().splitlines()]
    assert [op["step"] for op in writer.applied] == [1] and kept == [2, 3, 4]


def test_a_store_that_refuses_this_users_writes_keeps_every_record(tmp_path: Path, capsys) -> None:
    """HTTP 403 (a read-only account): not "unreachable", and nothing is dropped; sync says so in one line."""
    import pytest
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from sweep.errors import SweepError
    from sweep.journal import replay

    class ReadOnly(Writer):
        client = None
        parent_id, exp_id = "p", "e"

        def apply(self, op: dict[str, Any]) -> None:
            raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)  # what a 403 becomes

    journal = Journal(ReadOnly(), tmp_path / "pending.jsonl")  # type: ignore[arg-type]
    journal.submit({"op": "metrics", "trial": "t", "step": 1})
    assert journal.refused and "Permission denied" in journal.refused
    assert "refuses this user's writes" in capsys.readouterr().err
    assert [json.loads(x)["step"] for x in (tmp_path / "pending.jsonl").read_text().splitlines()] == [1]

    class Parent:
        info = type("Info", (), {"experiment_id": "e"})()

    writer = ReadOnly()
    writer.client = type("Client", (), {"get_run": lambda self, run_id: Parent()})()
    with pytest.raises(SweepError, match="refuses this user's writes .* 1 records kept in"):
        replay(tmp_path / "pending.jsonl", writer, "http://mlflow:5000")  # type: ignore[arg-type]


def test_a_journal_line_cut_short_is_skipped_and_counted(tmp_path: Path, capsys) -> None:
    from sweep.journal import read_journal, replay

    path = tmp_path / "pending.jsonl"
    lines = ['{"op": "metrics", "trial": "t", "step": 1}', '{"op": "metrics", "trial": "t", "step": 2}', '{"op": "me']
    path.write_text("\n".join(lines))
    ops, skipped = read_journal(path)
    assert [op["step"] for op in ops] == [1, 2] and skipped == 1

    class Parent:
        info = type("Info", (), {"experiment_id": "e"})()

    writer = Writer()
    writer.client = type("Client", (), {"get_run": lambda self, run_id: Parent()})()  # type: ignore[attr-defined]
    writer.parent_id, writer.exp_id = "p", "e"  # type: ignore[attr-defined]
    assert replay(path, writer, "http://mlflow:5000") == 2  # type: ignore[arg-type]
    assert [op["step"] for op in writer.applied] == [1, 2] and not path.exists()
    assert "1 unreadable lines" in capsys.readouterr().err
