"""The terminal, as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OBJECTIVE = "Write a one-page brief on rainwater harvesting for a community garden"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "DISCORD_TOKEN", "OPENAI_BASE_URL")}
    env["ATEAMS_CONFIG"] = str(tmp_path / "absent.toml")
    env["COLUMNS"] = "200"
    return env


def _ateams(tmp_path: Path, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agency", *args], cwd=tmp_path, env=_env(tmp_path), input=stdin,
        capture_output=True, text=True, check=False, timeout=timeout,
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
                       capture_output=True, text=True, check=False, timeout=60)
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


# ---- every failure a user can cause ends with a message and a non-zero status, never a traceback (issue 12) ----


def _clean_failure(r: subprocess.CompletedProcess[str], code: int | tuple[int, ...], *needles: str) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "╭─ Traceback" not in out, out[-3000:]
    assert r.returncode != 0
    assert r.returncode in ((code,) if isinstance(code, int) else code), (r.returncode, out[-2000:])
    for needle in needles:
        assert needle in " ".join(r.stderr.split()), r.stderr[-2000:]


@pytest.fixture(scope="module")
def made_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with an empty, upgraded database (``ateams db upgrade``)."""
    root = tmp_path_factory.mktemp("cli-db")
    env = _env(root)
    env["ATEAMS_DATA_DIR"] = str(root / "d")
    r = subprocess.run([sys.executable, "-m", "agency", "db", "upgrade"], cwd=root, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    return root / "d"


@pytest.mark.parametrize("command", ["resume", "cost", "audit", "replay"])
def test_an_unknown_project_is_named_with_what_to_check(tmp_path: Path, made_db: Path, command: str) -> None:
    r = _ateams(tmp_path, command, "99", "--data-dir", str(made_db), timeout=120)
    _clean_failure(r, 1, "There is no project #99.", "Projects are numbered from 1 in each data folder")
    assert "DRY RUN" not in r.stdout  # stopped before anything started


@pytest.mark.parametrize("command", ["resume", "cost", "audit", "replay"])
def test_a_data_folder_without_a_database_is_said_so_and_left_alone(tmp_path: Path, command: str) -> None:
    r = _ateams(tmp_path, command, "1", "--data-dir", str(tmp_path / "empty"), timeout=60)
    _clean_failure(r, 1, "There is no database at", "--data-dir")
    assert not (tmp_path / "empty").exists()  # a read command makes no database


@pytest.mark.parametrize("command", ["resume", "cost", "audit", "replay"])
def test_a_project_id_that_is_not_a_number_is_a_usage_error(tmp_path: Path, command: str) -> None:
    r = _ateams(tmp_path, command, "three", timeout=60)
    _clean_failure(r, 2)
    assert "'project'" in r.stderr and "integer" in r.stderr


def test_project_zero_does_not_exist(tmp_path: Path, made_db: Path) -> None:
    r = _ateams(tmp_path, "resume", "0", "--data-dir", str(made_db), timeout=60)
    _clean_failure(r, 2, "There is no project #0.")


@pytest.mark.parametrize("budget", ["-5", "0", "inf", "nan", "-inf"])
def test_a_budget_that_is_not_a_positive_amount_is_refused_before_the_run(tmp_path: Path, budget: str) -> None:
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", "--budget", budget, OBJECTIVE, "--data-dir", str(tmp_path / "d"), timeout=60)
    _clean_failure(r, 2, "--budget must be a positive number of US dollars", "For example --budget 2.50")
    assert not (tmp_path / "d").exists()


def test_a_budget_that_is_not_a_number_is_a_usage_error(tmp_path: Path) -> None:
    r = _ateams(tmp_path, "run", "--budget", "lots", OBJECTIVE, timeout=60)
    _clean_failure(r, 2)
    assert "--budget" in r.stderr


@pytest.mark.parametrize(("objective", "says"), [
    ("", "The objective is empty."),
    ("   ", "The objective is empty."),
    ("short", "The objective is too short."),
    ("rainwater-harvesting-brief", "The objective is not a sentence."),
    ("word " * 900, "The objective is too long"),
])
def test_an_unusable_objective_is_refused_with_an_example(tmp_path: Path, objective: str, says: str) -> None:
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", objective, "--data-dir", str(tmp_path / "d"), timeout=60)
    _clean_failure(r, 2, says, 'e.g. ateams run "Write a one-page brief')
    assert "DRY RUN" not in r.stdout


def test_a_settings_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    env = _env(tmp_path)
    env["ATEAMS_CONFIG"] = str(tmp_path / "conf")
    r = subprocess.run([sys.executable, "-m", "agency", "run", "--dry-run", OBJECTIVE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, 2, "is a folder, not a file", "ATEAMS_CONFIG")


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe[engine]\n", "is not UTF-8 text"),
    (b"[engine\nmax_revisions = ", "is not valid TOML"),
])
def test_a_settings_file_that_cannot_be_read_is_named(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "bad.toml").write_bytes(content)
    env = _env(tmp_path)
    env["ATEAMS_CONFIG"] = str(tmp_path / "bad.toml")
    r = subprocess.run([sys.executable, "-m", "agency", "cost", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, 2, says, "bad.toml")


def test_an_unreadable_settings_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # in-process: root reads any file, so the permission error is made where the settings file is read
    from typer.testing import CliRunner

    from agency.cli import app

    conf = tmp_path / "locked.toml"
    conf.write_text("[engine]\n")
    monkeypatch.setenv("ATEAMS_CONFIG", str(conf))
    real = Path.read_text

    def locked(self: Path, *a: object, **kw: object) -> str:
        if self == conf:
            raise PermissionError(13, "Permission denied", str(conf))
        return real(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", locked)
    r = CliRunner().invoke(app, ["cost", "1", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2, (r.output, r.exception)
    text = " ".join(r.output.split())
    assert "Cannot read the settings file" in text and "Permission denied" in text and "ATEAMS_CONFIG" in text


@pytest.mark.parametrize("where", ["under_a_file", "a_file"])
def test_a_data_folder_that_cannot_be_a_folder_is_refused(tmp_path: Path, where: str) -> None:
    (tmp_path / "plain").write_text("x")
    target = tmp_path / "plain" / "d" if where == "under_a_file" else tmp_path / "plain"
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", OBJECTIVE, "--data-dir", str(target), timeout=60)
    _clean_failure(r, 2, "data_dir" if where == "a_file" else "as the data folder")
    assert "DATA_DIR" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_a_data_folder_that_is_not_writable_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", OBJECTIVE, "--data-dir", str(locked / "d"), timeout=60)
    _clean_failure(r, 2, "Permission denied", "--data-dir")


def test_a_deliverables_folder_that_cannot_be_made_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", OBJECTIVE, "--data-dir", str(tmp_path / "d"),
                "--out", str(tmp_path / "plain" / "out"), timeout=60)
    _clean_failure(r, 2, "as the deliverables folder", "is a file, not a folder", "--out")
    assert "DRY RUN" not in r.stdout


@pytest.mark.parametrize("out", ["folder", "under_a_file"])
def test_an_audit_file_that_cannot_be_written_is_refused(tmp_path: Path, made_db: Path, out: str) -> None:
    (tmp_path / "plain").write_text("x")
    (tmp_path / "folder").mkdir()
    target = tmp_path / "folder" if out == "folder" else tmp_path / "plain" / "a.jsonl"
    r = _ateams(tmp_path, "audit", "1", "--data-dir", str(made_db), "--out", str(target), timeout=60)
    _clean_failure(r, 2, "--out")


@pytest.mark.parametrize("url", ["nosuchdialect://x", "postgresql+nosuchdriver://u:pw-hidden@127.0.0.1:1/x"])
@pytest.mark.parametrize("command", [("run", "--dry-run", "--auto-approve", OBJECTIVE), ("db", "upgrade"), ("cost", "1")])
def test_a_database_url_that_cannot_be_used_is_named(tmp_path: Path, url: str, command: tuple[str, ...]) -> None:
    env = _env(tmp_path)
    env["ATEAMS_DATABASE_URL"] = url
    r = subprocess.run([sys.executable, "-m", "agency", *command], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, (1, 2), "database_url")
    assert "ATEAMS_DATABASE_URL" in r.stderr and "pw-hidden" not in r.stderr


@pytest.mark.parametrize("command", [("run", "--dry-run", "--auto-approve", OBJECTIVE), ("resume", "1"), ("cost", "1"),
                                     ("audit", "1"), ("replay", "1"), ("models", "report")])
def test_a_damaged_database_is_named_with_what_to_do(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ateams.db").write_bytes(b"this is not an SQLite database, only text " * 50)
    r = _ateams(tmp_path, *command, "--data-dir", str(tmp_path / "d"), timeout=60)
    _clean_failure(r, 1, "is not an A-TEAMs database, or it is damaged", "--data-dir")


def test_db_upgrade_to_an_unknown_revision(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["ATEAMS_DATA_DIR"] = str(tmp_path / "d")
    r = subprocess.run([sys.executable, "-m", "agency", "db", "upgrade", "nosuchrev"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, 1, "Could not upgrade the database", "nosuchrev", "the revision")


def test_db_upgrade_in_a_folder_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    env = _env(tmp_path)
    env["ATEAMS_DATA_DIR"] = str(tmp_path / "plain" / "d")
    r = subprocess.run([sys.executable, "-m", "agency", "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, (1, 2), "DATA_DIR")


@pytest.mark.parametrize("token", [None, "   "])
def test_the_bot_without_a_token_says_how_to_get_one(tmp_path: Path, token: str | None) -> None:
    env = _env(tmp_path)
    if token is not None:
        env["DISCORD_TOKEN"] = token
    env["ATEAMS_DATA_DIR"] = str(tmp_path / "d")
    r = subprocess.run([sys.executable, "-m", "agency", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, 2, "DISCORD_TOKEN is not set", "developer portal")


def test_the_bot_with_a_data_folder_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    env = _env(tmp_path)
    env["DISCORD_TOKEN"] = "not-a-real-token"
    env["ATEAMS_DATA_DIR"] = str(tmp_path / "plain" / "d")
    r = subprocess.run([sys.executable, "-m", "agency", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60)
    _clean_failure(r, 2, "DATA_DIR")


def test_replay_with_a_timeout_that_is_not_positive(tmp_path: Path, made_db: Path) -> None:
    r = _ateams(tmp_path, "replay", "1", "--timeout", "-1", "--data-dir", str(made_db), timeout=60)
    _clean_failure(r, 2, "--timeout must be a positive number of seconds")
