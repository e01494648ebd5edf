"""The observability commands, as a user runs them after an offline project."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OBJECTIVE = "Write a one-page brief on rainwater harvesting for a community garden"


def _ateams(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "DISCORD_TOKEN", "OPENAI_BASE_URL")}
    env.update(ATEAMS_CONFIG=str(tmp_path / "absent.toml"), COLUMNS="200", ATEAMS_MEMORY__ENABLED="false")
    return subprocess.run([sys.executable, "-m", "agency", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_cost_models_report_audit_and_replay_commands(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    r = _ateams(tmp_path, "run", "--dry-run", "--auto-approve", "--quiet", OBJECTIVE, "--data-dir", data, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]

    r = _ateams(tmp_path, "cost", "1", "--data-dir", data)
    assert r.returncode == 0, r.stderr[-3000:]
    for part in ("by stream", "by member", "by model", "by role/purpose", "pm/plan", "collaborator/review", "#research", "Orchestration"):
        assert part in r.stdout, part

    r = _ateams(tmp_path, "models", "report", "--data-dir", data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Model routing report" in r.stdout and "accept %" in r.stdout and "researcher" in r.stdout and "Thresholds: strong >= 3.5" in r.stdout

    out = tmp_path / "audit" / "p1.jsonl"
    r = _ateams(tmp_path, "audit", "1", "--out", str(out), "--data-dir", data)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[0]["type"] == "project" and {"event", "message", "llm_call"} <= {x["type"] for x in records}
    assert f"{len(records)} records written" in r.stderr

    r = _ateams(tmp_path, "replay", "1", "--data-dir", data)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "same tasks, states and deliverable" in r.stdout

    r = _ateams(tmp_path, "cost", "42", "--data-dir", data)
    assert r.returncode == 1 and "no project #42" in r.stderr
