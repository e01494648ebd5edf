"""Smoke test of the benchmark suite: every scenario at its smallest (``--quick``) size.

Correctness only: projects complete and the counts add up. Timings are never asserted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agency.llm.base import ModelRequest
from agency.llm.openai import OpenAIModel
from agency.roles import collaborator, specialist
from agency.schemas import AgentTurn, Review, WorkPlan
from bench import report, scenarios
from bench.plans import critical_calls, make_plan, parse_shape, shape_from_text, shape_tag, specialists, total_calls
from bench.roles import RoleHandler, schema_of
from bench.scenarios import QUICK, SCENARIOS


@pytest.mark.parametrize(
    ("shape", "tasks", "chain_tasks"),
    [("aggregate:8", 9, 2), ("chain:4", 4, 4), ("diamond:3", 5, 3), ("layered:4x3", 12, 3)],
)
def test_plan_shapes(shape: str, tasks: int, chain_tasks: int) -> None:
    s = parse_shape(shape)
    plan = WorkPlan.model_validate(make_plan(s))
    assert len(plan.tasks) == tasks
    path, calls = critical_calls(s)
    assert len(path) == chain_tasks and calls == 3 + 2 * chain_tasks
    assert total_calls(s) == 3 + 2 * tasks
    assert total_calls(s, learning=True) == total_calls(s) + specialists(s) == total_calls(s) + len(plan.specialists)
    assert shape_from_text(f"objective {shape_tag(s)}") == s


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "tool"])
def test_handler_reads_every_mode(mode: str) -> None:
    """The mock finds the schema and the task in what the provider really sends."""
    model = OpenAIModel(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", mode=mode)
    task = {"key": "T7", "title": "Part T7", "description": "Do part T7.", "success_criteria": ["a", "b"]}
    work = specialist.work_messages("You are Writer-A.", objective="o", task=task, dep_outputs={}, context=[], review_notes=None)
    review = collaborator.review_messages("Collab-x", "x", "goal", task, "output", 0, 2)
    handler = RoleHandler("aggregate:2")
    for schema, msgs in ((AgentTurn, work), (Review, review)):
        body = model._build(ModelRequest(messages=msgs, schema_name=schema.__name__, json_schema=schema.model_json_schema()), "m", mode)
        assert schema_of(body)[0] == schema.__name__
        answer = schema.model_validate(handler(body))
        if schema is AgentTurn:
            assert answer.commands == ["/submit T7"]
        else:
            assert answer.decision == "accept"


def _check_batch(r: dict[str, Any]) -> None:
    assert r["ok"], (r["checks"], r.get("failed_projects"))
    assert r["model_calls"] == r["server_calls"] == r["expected_calls"]
    assert sum(v["calls"] for v in r["by_role"].values()) == r["model_calls"]
    assert r["task_calls"] == 2 * r["tasks_per_project"] * r["projects"]
    assert r["by_role"]["pm"]["calls"] == 3 * r["projects"]
    assert r["by_role"]["learning"]["calls"] == r["by_schema"]["Evaluation"] > 0
    assert r["prompt_tokens"] == r["server_prompt_tokens"] > 0
    assert r["by_schema"]["AgentTurn"] == r["by_schema"]["Review"] == r["tasks_per_project"] * r["projects"]
    assert r["critical_path_calls"] >= 5 and r["bound_s"] >= 0


async def test_engine_scenarios_quick(tmp_path: Path) -> None:
    results: dict[str, Any] = {}
    for name in ("critical_path", "overhead", "tokens", "scale"):
        results[name] = await SCENARIOS[name](**QUICK[name], tmp_dir=tmp_path)
    for name in ("critical_path", "overhead", "scale"):
        assert results[name]["cases"]
        for case in results[name]["cases"].values():
            _check_batch(case)
    assert set(results["scale"]["cases"]) == {str(n) for n in QUICK["scale"]["projects"]}
    for case in results["tokens"]["cases"].values():
        assert case["ok"], case["checks"]
        assert case["calls_per_project"] == total_calls(parse_shape(case["shape"]), learning=True)
        assert case["by_role"]["learning"]["calls"] == specialists(parse_shape(case["shape"]))
        assert case["task_calls_per_task"] == 2
    table = report.rows(results)
    assert len(table) == sum(len(r["cases"]) for r in results.values())
    assert all(row[4] != "FAILED" for row in table)
    assert "| critical path |" in report.render(table)
    assert report.headline(results)


async def test_memory_recall_quick(tmp_path: Path) -> None:
    r = await SCENARIOS["memory_recall"](**QUICK["memory_recall"], tmp_dir=tmp_path)
    assert r["ok"], r["checks"]
    for f in r["sizes"].values():
        assert f["search_ms_p50"] <= f["search_ms_p95"]


@pytest.mark.parametrize("mock", ["process", "thread"])
async def test_mock_in_its_own_process_or_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock: str) -> None:
    """``python -m bench`` runs the mock in a child process (default) or, for comparison, in a thread."""
    monkeypatch.setattr(scenarios, "MOCK", mock)
    r = await scenarios.run_batch("aggregate:1", latency=0.01, tmp_dir=tmp_path, warmup=True)
    _check_batch(r)
    assert r["mock"] == mock and r["critical_path_gaps_ms"]
    assert r["mock_cpu_s"] > 0
