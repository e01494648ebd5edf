"""Two processes on one SQLite file, each creating projects: every project is run by one process at a time
(leases), every task completes once, every message is sent once (claims), and when one process is killed with
SIGKILL the other takes its projects over and finishes them."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

WORKER = Path(__file__).with_name("multi_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _start(work: Path, create: int) -> subprocess.Popen:
    err = (work / f"worker-{create}-{time.monotonic_ns()}.err").open("wb")
    return subprocess.Popen([sys.executable, str(WORKER), str(work), "--create", str(create)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=err)


def _wait(proc: subprocess.Popen, work: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        errs = "\n".join(p.read_text()[-2000:] for p in work.glob("worker-*.err"))
        raise AssertionError(f"worker hung\n{errs}") from None


def _until(pred, timeout: float = 60) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met")
        time.sleep(0.01)


def test_two_processes_share_one_database_and_one_takes_over_when_the_other_dies(tmp_path: Path) -> None:
    work = tmp_path
    (work / "expected").write_text("4")
    first = _start(work, 2)
    _until(lambda: any(r.get("started") for r in _lines(work / "runs.jsonl")))  # the schema exists, its projects too
    second = _start(work, 2)
    # the first process is killed while its projects are under way: the second finishes them
    _until(lambda: Counter(r["pid"] for r in _lines(work / "progress.jsonl"))[first.pid] >= 6)
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert _wait(second, work) == 0, "\n".join(p.read_text()[-3000:] for p in work.glob("worker-*.err"))

    db = sqlite3.connect(work / "data" / "ateams.db")
    try:
        projects = db.execute("select id, status, lease_owner from projects").fetchall()
        tasks = db.execute("select project_id, key, status, completions from tasks").fetchall()
        out = db.execute("select id, status from messages where direction = 'out'").fetchall()
        ok_keys = db.execute("select call_key, count(*) from llm_calls where outcome in ('ok', 'repaired') group by call_key").fetchall()
    finally:
        db.close()
    assert len(projects) == 4 and all(st == "done" and owner is None for _, st, owner in projects), projects
    assert tasks and all(st == "done" and n == 1 for _, _, st, n in tasks), tasks
    # each message reached the platform once (the kill may have cut one between send and mark: resent with its nonce)
    posted = Counter(r["id"] for r in _lines(work / "chat.jsonl"))
    assert all(n == 1 for n in posted.values()), [i for i, n in posted.items() if n > 1]
    assert {i for i, st in out if st == "delivered"} == set(posted)
    assert not [i for i, st in out if st == "pending"]
    attempts = Counter(r["id"] for r in _lines(work / "attempts.jsonl"))
    resent = [i for i, n in attempts.items() if n > 1]
    assert len(resent) <= 16, resent  # at most the sends in flight at the kill (one per space)
    # no recorded answer twice; both processes worked, and the second ran projects the first had created
    assert all(n == 1 for _, n in ok_keys), [k for k, n in ok_keys if n > 1]
    by_pid = Counter(r["pid"] for r in _lines(work / "progress.jsonl"))
    assert by_pid[first.pid] > 0 and by_pid[second.pid] > 0
    created_by_first = next(r["created"] for r in _lines(work / "runs.jsonl") if r.get("pid") == first.pid and "created" in r)
    assert all(st == "done" for pid, st, _ in projects if pid in created_by_first)
