"""The terminal, as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OBJECTIVE = "Write a one-page brief on rainwater harvesting for a community garden"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "DISCORD_TOKEN", "OPENAI_BASE_URL")}
    env["ATEAMS_CONFIG"] = str(tmp_path / "absent.toml")
    env["COLUMNS"] = "200"
    return env


def _ateams(tmp_path: Path, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agency", *args], cwd=tmp_path, env=_env(tmp_path), input=stdin,
        capture_output=True, text=True, timeout=timeout,
    )


def test_offline_run_writes_the_deliverable_and_says_no_model_was_called(tmp_path: Path) -> None:
    r = _ateams(tmp_path, "run", "--auto-approve", OBJECTIVE, "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "DRY RUN" in out and "no model was called" in out
    assert "#research" in out and "Researcher-A" in out  # grouped by channel and thread, with personas
    assert "What a real run would cost" in out
    assert "Evaluation of @Writer-A" in out  # the Learning Manager evaluated the team ...
    assert "System message v2 of @Writer-A is now active." in out  # ... and --auto-approve applied its revision
    last = out.strip().splitlines()[-1]
    assert last.startswith("Project #1 done. Deliverable:"), last
    files = list((tmp_path / "out").glob("project-1-*.md"))
    assert len(files) == 1
    md = files[0].read_text()
    assert "no model was called" in md and "Appendix: accepted task outputs" in md


def test_interactive_director_answers_at_the_prompt(tmp_path: Path) -> None:
    stdin = "/project status\n/approve 2\n/approve\n"
    r = _ateams(tmp_path, "run", "--quiet", OBJECTIVE, "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"), stdin=stdin)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Approach 2 chosen." in r.stdout
    assert "Plan approved." in r.stdout
    assert "**Project #1** - new" in r.stdout  # the status command answered


def test_bad_settings_stop_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[engine]\nmax_revisions = -1\n")
    env = _env(tmp_path)
    env["ATEAMS_CONFIG"] = str(tmp_path / "bad.toml")
    r = subprocess.run([sys.executable, "-m", "agency", "run", "--auto-approve", OBJECTIVE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "engine.max_revisions" in r.stderr and "Traceback" not in r.stderr


def test_bad_oversight_is_refused(tmp_path: Path) -> None:
    r = _ateams(tmp_path, "run", "--oversight", "sometimes", OBJECTIVE, timeout=60)
    assert r.returncode == 2 and "--oversight must be one of" in r.stderr


def test_pause_then_resume_from_the_terminal(tmp_path: Path) -> None:
    args = ("--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"))
    r = _ateams(tmp_path, "run", "--quiet", OBJECTIVE, *args, stdin="/project pause\n")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "paused; continue it with `ateams resume 1`" in r.stdout
    r2 = _ateams(tmp_path, "resume", "1", "--auto-approve", "--quiet", *args)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "resumed" in r2.stdout and r2.stdout.strip().splitlines()[-1].startswith("Project #1 done. Deliverable:")
    r3 = _ateams(tmp_path, "resume", "7", *args)
    assert r3.returncode == 1 and "no project #7" in r3.stderr


# ---- a gate asked before a stop is shown again and answered on resume (issue 11, defect 4) ---------------------


def _delivered_gates(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM messages WHERE kind = 'approval' AND status = 'delivered'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not made yet
        return 0
    finally:
        con.close()


def _stop_at_the_first_gate(tmp_path: Path, sig: int) -> str:
    """``ateams run`` with a Director who says nothing; stopped with ``sig`` once the approach gate is delivered."""
    import signal
    import time

    data = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agency", "run", OBJECTIVE, "--data-dir", str(data), "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _delivered_gates(data / "ateams.db") == 0:  # the event: the gate's message is marked delivered
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the approach gate was never delivered"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (-sig, 128 + sig), proc.returncode
    assert "Pick one (`/approve N`)" in out
    return out


def test_resume_auto_approve_answers_a_gate_delivered_before_sigkill(tmp_path: Path) -> None:
    import signal

    _stop_at_the_first_gate(tmp_path, signal.SIGKILL)
    args = ("--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"))
    r = _ateams(tmp_path, "resume", "1", "--auto-approve", *args, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "Still waiting for your decision (asked before the stop):" in out
    assert out.count("Approaches for project #1") == 1  # shown again once
    assert "Director (auto-approve): Approach 1 chosen." in out
    assert out.strip().splitlines()[-1].startswith("Project #1 done. Deliverable:")


def test_resume_auto_approve_answers_a_gate_delivered_before_sigterm(tmp_path: Path) -> None:
    import signal

    _stop_at_the_first_gate(tmp_path, signal.SIGTERM)
    args = ("--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"))
    r = _ateams(tmp_path, "resume", "1", "--auto-approve", "--quiet", *args, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].startswith("Project #1 done. Deliverable:")


def test_resume_shows_the_waiting_gate_to_the_director_at_the_prompt(tmp_path: Path) -> None:
    import signal

    _stop_at_the_first_gate(tmp_path, signal.SIGTERM)
    args = ("--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out"))
    r = _ateams(tmp_path, "resume", "1", *args, stdin="/approve 2\n", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "Still waiting for your decision (asked before the stop):" in out
    assert out.index("Still waiting") < out.index("Approach 2 chosen.")
    assert out.strip().splitlines()[-1].startswith("Project #1 done. Deliverable:")
