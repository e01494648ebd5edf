"""The tool registry: validation, refusals, recording, policy."""
from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import Field

from agency.errors import AgencyError, SettingsError
from agency.tools import (
    SandboxLimits,
    ToolArgs,
    ToolCall,
    ToolContext,
    ToolPolicy,
    ToolRegistry,
    ToolResult,
    build_registry,
    clip,
)
from agency.tools.web_search import DISABLED_MESSAGE

SPECIALIST = ToolContext(agency_id=1, member="Analyst-A", role="specialist", project_id=3)
PM = ToolContext(agency_id=1, member="PM", role="pm", project_id=3)
# the wall limit far above the CPU limit: on a loaded machine 1 s of CPU can take several seconds of wall time,
# and this test is about the CPU limit
FAST = ToolPolicy(python=SandboxLimits(cpu_seconds=1, memory_mb=128, wall_seconds=120, output_chars=500))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[ToolContext, ToolCall, ToolResult]] = []

    async def __call__(self, ctx: ToolContext, call: ToolCall, result: ToolResult) -> None:
        self.calls.append((ctx, call, result))


class EchoArgs(ToolArgs):
    text: str = Field(min_length=1)
    times: int = Field(default=1, ge=1, le=3)


class EchoTool:
    name = "echo"
    description = "Repeat the text."
    Args: ClassVar[type[EchoArgs]] = EchoArgs
    roles = frozenset({"specialist", "pm"})

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.runs = 0

    async def run(self, args: EchoArgs, ctx: ToolContext) -> ToolResult:
        self.runs += 1
        if self.fail is not None:
            raise self.fail
        return ToolResult(tool=self.name, ok=True, output=" ".join([args.text] * args.times))


def registry_with(tool: EchoTool, **policy) -> tuple[ToolRegistry, Recorder]:
    rec = Recorder()
    enabled = frozenset({"retrieve", "python", "web_search", "echo"})
    return build_registry(ToolPolicy(enabled=enabled, **policy), recorder=rec, extra_tools=[tool]), rec


async def test_a_valid_call_runs_and_is_recorded() -> None:
    tool = EchoTool()
    reg, rec = registry_with(tool)
    call = ToolCall(tool="echo", args={"text": "hi", "times": 2})
    result = await reg.execute(call, SPECIALIST)
    assert result.ok and result.output == "hi hi"
    assert result.duration_ms >= 0
    assert rec.calls == [(SPECIALIST, call, result)]


async def test_unknown_tool_is_refused_with_the_available_tools() -> None:
    reg, rec = registry_with(EchoTool())
    result = await reg.execute(ToolCall(tool="shell", args={"cmd": "ls"}), SPECIALIST)
    assert not result.ok
    assert result.error == "unknown tool 'shell'; the tools you can call are: echo, python, retrieve"
    assert len(rec.calls) == 1 and rec.calls[0][2] is result


async def test_tool_not_allowed_for_the_role_is_refused() -> None:
    reg, rec = registry_with(EchoTool())
    result = await reg.execute(ToolCall(tool="python", args={"code": "print(1)"}), PM)
    assert not result.ok
    assert result.error is not None
    assert "not available to the pm role" in result.error
    assert "echo, retrieve" in result.error
    assert len(rec.calls) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"times": 2}, "'text': required argument is missing"),
        ({"text": "hi", "times": 9}, "'times': Input should be less than or equal to 3"),
        ({"text": "hi", "loud": True}, "'loud': unknown argument; remove it"),
        ({"text": "hi", "times": "many"}, "'times': Input should be a valid integer"),
    ],
)
async def test_bad_arguments_are_refused_naming_the_field(args: dict, expected: str) -> None:
    tool = EchoTool()
    reg, rec = registry_with(tool)
    result = await reg.execute(ToolCall(tool="echo", args=args), SPECIALIST)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("invalid arguments for tool 'echo': ")
    assert expected in result.error
    assert "Expected arguments (JSON schema)" in result.error
    assert tool.runs == 0
    assert len(rec.calls) == 1


async def test_web_search_is_off_by_default_with_a_clear_message() -> None:
    reg, rec = registry_with(EchoTool())
    result = await reg.execute(ToolCall(tool="web_search", args={"query": "weather"}), SPECIALIST)
    assert not result.ok
    assert result.error == DISABLED_MESSAGE
    assert "tools.web_search = true" in result.error and "pip install ddgs" in result.error
    assert len(rec.calls) == 1


async def test_a_tool_left_out_of_the_policy_is_refused() -> None:
    rec = Recorder()
    reg = build_registry(ToolPolicy(enabled=frozenset({"retrieve"})), recorder=rec)
    result = await reg.execute(ToolCall(tool="python", args={"code": "print(1)"}), SPECIALIST)
    assert not result.ok
    assert result.error is not None and "disabled in this agency's settings" in result.error
    assert "python" not in reg.describe_for("specialist")


async def test_a_failing_tool_becomes_a_failed_result() -> None:
    reg, rec = registry_with(EchoTool(fail=RuntimeError("boom")))
    result = await reg.execute(ToolCall(tool="echo", args={"text": "hi"}), SPECIALIST)
    assert not result.ok
    assert result.error == "the tool failed: RuntimeError: boom"
    assert len(rec.calls) == 1


async def test_an_agency_error_keeps_its_user_message() -> None:
    reg, _ = registry_with(EchoTool(fail=AgencyError("the archive is offline")))
    result = await reg.execute(ToolCall(tool="echo", args={"text": "hi"}), SPECIALIST)
    assert result.error == "the archive is offline"


async def test_a_failing_recorder_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(ctx: ToolContext, call: ToolCall, result: ToolResult) -> None:
        raise RuntimeError("db down")

    reg = ToolRegistry([EchoTool()], ToolPolicy(enabled=frozenset({"echo"})), recorder=broken)
    result = await reg.execute(ToolCall(tool="echo", args={"text": "hi"}), SPECIALIST)
    assert result.ok
    assert "tool recorder failed" in caplog.text


async def test_calls_past_the_per_turn_limit_are_skipped() -> None:
    tool = EchoTool()
    reg, rec = registry_with(tool, max_calls_per_turn=2)
    calls = [ToolCall(tool="echo", args={"text": str(i)}) for i in range(3)]
    results = await reg.execute_many(calls, SPECIALIST)
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error is not None and "only 2 tool calls are allowed per turn" in results[2].error
    assert tool.runs == 2
    assert len(rec.calls) == 3


async def test_output_is_clipped_by_the_policy() -> None:
    tool = EchoTool()
    reg, _ = registry_with(tool, max_output_chars=100)
    result = await reg.execute(ToolCall(tool="echo", args={"text": "z" * 400, "times": 3}), SPECIALIST)
    assert result.ok and result.truncated
    assert len(result.output) <= 100


async def test_python_runs_through_the_registry() -> None:
    rec = Recorder()
    reg = build_registry(FAST, recorder=rec)
    result = await reg.execute(ToolCall(tool="python", args={"code": "print(6 * 7)"}), SPECIALIST)
    assert result.ok, result.error
    assert result.output == "42"
    bad = await reg.execute(ToolCall(tool="python", args={"code": "while True: pass"}), SPECIALIST)
    assert not bad.ok and bad.error is not None and "CPU limit (1 s) exceeded" in bad.error
    assert [c[2] for c in rec.calls] == [result, bad]


def test_describe_for_lists_only_allowed_enabled_tools_with_schemas() -> None:
    reg = build_registry()
    text = reg.describe_for("specialist")
    assert "- python:" in text and "- retrieve:" in text
    assert "web_search" not in text  # off by default
    assert '"code"' in text and '"query"' in text and '"limit"' in text
    assert "at most 3 per turn" in text

    assert "- python:" not in reg.describe_for("learning")
    assert "- retrieve:" in reg.describe_for("learning")

    on = build_registry(ToolPolicy(web_search_enabled=True))
    assert "- web_search:" in on.describe_for("pm")
    assert "- python:" not in on.describe_for("pm")
    assert reg.describe_for("nobody") == "You have no tools."


def test_registry_rejects_duplicate_names_and_unknown_roles() -> None:
    with pytest.raises(ValueError, match="two tools"):
        ToolRegistry([EchoTool(), EchoTool()])
    bad = EchoTool()
    bad.roles = frozenset({"janitor"})
    with pytest.raises(ValueError, match="unknown roles"):
        ToolRegistry([bad])


def test_policy_from_config_table() -> None:
    policy = ToolPolicy.from_mapping(
        {
            "enabled": ["retrieve", "python"],
            "web_search": True,
            "max_calls_per_turn": 2,
            "python": {"cpu_seconds": 2, "memory_mb": 128, "wall_seconds": 4.5},
        }
    )
    assert policy.enabled == frozenset({"retrieve", "python"})
    assert policy.web_search_enabled
    assert not policy.is_enabled("web_search")  # on, but not in the enabled list
    assert policy.python == SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=4.5)
    assert ToolPolicy.from_mapping(None) == ToolPolicy()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"webs_search": True}, "tools.webs_search"),
        ({"web_search": "yes"}, "tools.web_search"),
        ({"max_calls_per_turn": 0}, "tools.max_calls_per_turn"),
        ({"python": {"memory": 5}}, "tools.python.memory"),
        ({"python": {"memory_mb": -1}}, "tools.python.memory_mb"),
        ({"python": {"cpu_seconds": 1.5}}, "tools.python.cpu_seconds"),
        ({"enabled": "python"}, "tools.enabled"),
    ],
)
def test_policy_errors_name_the_key(table: dict, key: str) -> None:
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        ToolPolicy.from_mapping(table)


def test_clip_keeps_head_and_tail() -> None:
    text = "".join(str(i % 10) for i in range(1000))
    out, cut = clip(text, 200)
    assert cut and len(out) <= 200
    assert out.startswith(text[:50]) and out.endswith(text[-30:])
    assert clip("short", 200) == ("short", False)


def test_tool_call_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        ToolCall.model_validate({"tool": "python", "args": {}, "extra": 1})
