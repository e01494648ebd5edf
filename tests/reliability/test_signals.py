"""Graceful shutdown: SIGTERM/SIGINT stop `ateams run` cleanly (scheduling stops, writes finish,
the outbox is drained), and a restart on the same data directory resumes the project to done."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agency.console import ConsoleChat
from agency.service import AgencyService
from agency.settings import load_settings
from tests.conftest import drive

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVE = "Write a one-page brief on home espresso machines"


def _pending_approval(db_path: Path) -> bool:
    if not db_path.exists():
        return False
    try:
        con = sqlite3.connect(db_path, timeout=1)
        try:
            return con.execute("select count(*) from approvals where status = 'pending'").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is being created
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_gracefully_and_a_restart_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "ATEAMS_CONFIG": str(tmp_path / "absent.toml"), "ATEAMS_MEMORY__ENABLED": "false",
           "ATEAMS_LEARNING__ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DISCORD_TOKEN"):
        env.pop(k, None)
    cmd = [sys.executable, "-c", "from agency.cli import app; app()", "run", "--dry-run", "--oversight", "plan", "--quiet",
           "--data-dir", str(data), "--out", str(tmp_path / "out"), OBJECTIVE]
    out, err = (tmp_path / "stdout.txt").open("wb"), (tmp_path / "stderr.txt").open("wb")
    # no --auto-approve and stdin kept open: it waits for the Director at the approach gate
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err)
    try:
        end = time.monotonic() + 60
        while not _pending_approval(data / "ateams.db"):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < end, "the run never reached the approval gate"
            time.sleep(0.05)
        time.sleep(0.3)  # let it settle in the wait loop
        proc.send_signal(sig)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()
        out.close()
        err.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == 128 + sig, (rc, stderr[-2000:])
    assert f"Stopped by {signal.Signals(sig).name}" in stderr and "resumes" in stderr
    assert "Traceback" not in stderr

    con = sqlite3.connect(data / "ateams.db")
    try:
        (pid, status) = con.execute("select id, status from projects").fetchone()
        undelivered = con.execute("select count(*) from messages where direction = 'out' and status = 'pending' and kind != 'status'").fetchone()[0]
    finally:
        con.close()
    assert status == "awaiting_approach"  # saved as it was, not cancelled
    assert undelivered == 0  # the outbox was drained before exit

    if sig != signal.SIGTERM:
        return  # the restart is the same after either signal
    # a restart on the same data directory resumes the project to the end
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    settings = load_settings(data_dir=data, dry_run=True, memory={"enabled": False}, learning={"enabled": False})
    service = await AgencyService.create(settings, ConsoleChat(quiet=True))
    try:
        assert await service.start() == [pid]
        assert await drive(service, pid) == "done"
    finally:
        await service.close()
