"""Pydantic models for what crosses a boundary: LLM output, specialist
definition files, Director input. Everything a model returns is validated here
before the core acts on it."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HANDLE_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{1,31}$"
TASK_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$"
HANDLE_RE = re.compile(HANDLE_PATTERN)
TASK_ID_RE = re.compile(TASK_ID_PATTERN)
Oversight = Literal["autonomous", "plan", "milestones", "every_task"]
OVERSIGHT_LEVELS: tuple[str, ...] = ("autonomous", "plan", "milestones", "every_task")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


def _check_handle(v: str) -> str:
    v = v.lstrip("@")
    if not HANDLE_RE.match(v):
        raise ValueError(
            f"handle {v!r} must start with a letter and use 2-32 letters, digits, '-' or '_'"
        )
    return v


# -- approaches -------------------------------------------------------------------------
class Approach(_Model):
    title: str = Field(min_length=3, max_length=120)
    summary: str = Field(min_length=10, max_length=2000)
    outputs: list[str] = Field(min_length=1, max_length=10)
    risks: list[str] = Field(default_factory=list, max_length=10)
    rough_cost: str = Field("", max_length=200, description="rough cost, e.g. '12 model calls, ~$0.05'")


class ApproachSet(_Model):
    thinking: str = ""
    approaches: list[Approach] = Field(min_length=2, max_length=4)
    recommended: int = Field(1, ge=1, description="1-based index of the approach the PM recommends")

    @model_validator(mode="after")
    def _rec_in_range(self) -> "ApproachSet":
        if self.recommended > len(self.approaches):
            raise ValueError(f"recommended must be between 1 and {len(self.approaches)}")
        return self


# -- specialists -------------------------------------------------------------------------
class CustomCommand(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")
    description: str = Field(min_length=3, max_length=200)


def _no_reserved_commands(v: list[CustomCommand]) -> list[CustomCommand]:
    from agency.commands import RESERVED_NAMES

    for c in v:
        if c.name in RESERVED_NAMES:
            raise ValueError(f"custom command /{c.name} clashes with a built-in command")
    return v


class SpecialistDefinition(_Model):
    """A specialist's definition: a catalogue file, or created by the PM when hiring."""

    role: str = Field(min_length=2, max_length=40, pattern=r"^[a-z][a-z0-9-]*$")
    title: str = Field("", max_length=80)
    expertise: list[str] = Field(min_length=1, max_length=20)
    expectations: list[str] = Field(min_length=1, max_length=20)
    collaboration_strategy: str = Field(min_length=10, max_length=1000)
    adaptability_strategy: str = Field(min_length=10, max_length=1000)
    custom_commands: list[CustomCommand] = Field(default_factory=list, max_length=10)
    system_message: str = Field("", max_length=8000)  # the owner's own template (catalogue files only)
    tools: list[str] = Field(default_factory=list)
    pm_notes: str = Field("", max_length=4000)  # appended to the rendered system message, never in place of it

    _no_reserved = field_validator("custom_commands")(_no_reserved_commands)


class DefinitionDraft(_Model):
    """A definition the PM writes in a plan. For a catalogue role it only extends the catalogue's (see
    :func:`merge_definition`); for a new role it must be complete. Its ``system_message`` is kept as notes
    from the PM, appended to the system message the agency renders, never in place of it."""

    role: str = Field("", max_length=40)
    title: str = Field("", max_length=80)
    expertise: list[str] = Field(default_factory=list, max_length=20)
    expectations: list[str] = Field(default_factory=list, max_length=20)
    collaboration_strategy: str = Field("", max_length=1000)
    adaptability_strategy: str = Field("", max_length=1000)
    custom_commands: list[CustomCommand] = Field(default_factory=list, max_length=10)
    system_message: str = Field("", max_length=4000, description="notes added to the specialist's instructions")
    tools: list[str] = Field(default_factory=list)

    _no_reserved = field_validator("custom_commands")(_no_reserved_commands)


def _merge_items(base: list[str], extra: list[str], limit: int) -> list[str]:
    out = list(base)
    seen = {" ".join(x.lower().split()) for x in out}
    for x in extra:
        k = " ".join(x.lower().split())
        if k and k not in seen and len(out) < limit:
            out.append(x.strip())
            seen.add(k)
    return out


def merge_definition(role: str, base: SpecialistDefinition | None, draft: DefinitionDraft | None) -> SpecialistDefinition:
    """The definition a specialist is created with. A catalogue role (``base``) keeps every catalogue field
    (identity, title, strategies, tools, commands); the PM's expertise, expectations and commands are
    appended and its ``system_message`` becomes ``pm_notes``. A new role needs a complete draft: raises
    ValueError naming what is missing."""
    if draft is None:
        if base is None:
            raise ValueError(f"role {role!r} is not in the catalogue and has no definition")
        return base
    notes = draft.system_message.strip()
    if base is not None:
        names = {c.name for c in base.custom_commands}
        return base.model_copy(update={
            "expertise": _merge_items(base.expertise, draft.expertise, 20),
            "expectations": _merge_items(base.expectations, draft.expectations, 20),
            "custom_commands": [*base.custom_commands, *[c for c in draft.custom_commands if c.name not in names]][:10],
            "pm_notes": "\n".join(x for x in (base.pm_notes, notes) if x)[:4000],
        })
    data = draft.model_dump(exclude={"system_message"})
    data.update(role=role, pm_notes=notes)
    try:
        return SpecialistDefinition.model_validate(data)
    except ValidationError as e:
        missing = sorted({str(err["loc"][0]) for err in e.errors() if err.get("loc")})
        raise ValueError(f"the definition of new role {role!r} is incomplete ({', '.join(missing)})") from None


class StaffingSpec(_Model):
    """A specialist the plan needs: reuse a stored one (by handle) or create one."""

    handle: str
    role: str = Field(min_length=2, max_length=40)
    reuse: bool = False  # set by the engine: the handle is a stored specialist's
    definition: DefinitionDraft | None = None  # extends a catalogue role, or defines a new one

    _h = field_validator("handle")(_check_handle)

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        return v.strip().lower().replace(" ", "-")


# -- the plan ---------------------------------------------------------------------------
class TaskScores(_Model):
    """The PM's rating of a task on the routing criteria, each 1..5."""

    reasoning: int = Field(3, ge=1, le=5)
    domain: int = Field(3, ge=1, le=5)
    language: int = Field(3, ge=1, le=5)
    quality: int = Field(3, ge=1, le=5)


class StreamSpec(_Model):
    key: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}$", description="channel name, e.g. 'research'")
    goal: str = Field(min_length=5, max_length=500)
    success_criteria: list[str] = Field(min_length=1, max_length=10)


class TaskSpec(_Model):
    id: str = Field(description="e.g. T1")
    title: str = Field(min_length=3, max_length=200)
    description: str = Field(min_length=5, max_length=4000)
    stream: str = Field(min_length=1, max_length=40, description="the key of one of `streams`")
    assignee: str = Field(min_length=1, max_length=40, description="a handle from `specialists`, or a person")
    depends_on: list[str] = Field(default_factory=list, description="ids of the tasks whose output this one needs")
    success_criteria: list[str] = Field(min_length=1, max_length=10)
    scores: TaskScores = Field(default_factory=TaskScores, description="what the task demands, 1 (little) to 5 (much)")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not TASK_ID_RE.match(v):
            raise ValueError(f"task id {v!r} must start with a letter and be short (e.g. T1)")
        return v

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, v: str) -> str:
        return v.lstrip("@")

    @field_validator("depends_on")
    @classmethod
    def _deps(cls, v: list[str]) -> list[str]:
        for d in v:
            if not TASK_ID_RE.match(d):
                raise ValueError(f"dependency {d!r} is not a task id (e.g. T1)")
        return v


class WorkPlan(_Model):
    thinking: str = ""
    summary: str = Field(min_length=10, max_length=4000)
    outputs: list[str] = Field(min_length=1, max_length=20)
    success_criteria: list[str] = Field(min_length=1, max_length=20)
    streams: list[StreamSpec] = Field(min_length=1, max_length=12)
    specialists: list[StaffingSpec] = Field(min_length=1, max_length=30)
    tasks: list[TaskSpec] = Field(min_length=1, max_length=100)
    oversight: Oversight | None = None
    milestones: list[str] = Field(default_factory=list, description="stream keys to gate at 'milestones'")


# -- turns ------------------------------------------------------------------------------
class ToolRequest(_Model):
    """A tool call intent: validated and run by the core, never by the model."""

    tool: str = Field(min_length=1, max_length=64)
    args: dict = Field(default_factory=dict)


class AgentTurn(_Model):
    """One turn of any agent: private reasoning, a chat message, command intents, tool intents."""

    thinking: str = Field("", max_length=20000)
    message: str = Field("", max_length=60000, description="a short note to the team")
    output: str = Field("", max_length=60000, description="your complete work product when you /submit, else empty")
    commands: list[str] = Field(default_factory=list, max_length=10, description="e.g. /submit T1")
    tools: list[ToolRequest] = Field(default_factory=list, max_length=5, description="tools to run; results arrive next turn")


class Review(_Model):
    thinking: str = ""
    task: str = Field("", max_length=40, description="the task you review")
    decision: Literal["accept", "revise"]
    criteria_met: list[bool] = Field(default_factory=list, description="one per success criterion, in order")
    notes: str = Field("", max_length=4000, description="what to change (for revise)")
    message: str = Field("", max_length=4000)

    @model_validator(mode="after")
    def _notes_for_revise(self) -> "Review":
        if self.decision == "revise" and not self.notes:
            raise ValueError("a 'revise' decision needs notes that say what to change")
        return self


class Deliverable(_Model):
    title: str = Field(min_length=3, max_length=200)
    summary: str = Field(min_length=10, max_length=2000)
    body_markdown: str = Field(min_length=10)


class EscalationDecision(_Model):
    """The PM's answer to a blocked task."""

    thinking: str = ""
    action: Literal["feedback", "reassign", "hire", "replan", "escalate"]
    message: str = Field("", max_length=4000, description="feedback to the specialist, or the reason")
    assignee: str = ""  # reassign: an existing handle
    hire_role: str = ""  # hire: a catalogue role

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, v: str) -> str:
        return v.lstrip("@")


# -- director input ---------------------------------------------------------------------
class ProjectRequest(_Model):
    objective: str = Field(min_length=10, max_length=4000)
    oversight: Oversight = "plan"
    budget_usd: float | None = Field(None, gt=0)
    budget_tokens: int | None = Field(None, gt=0)

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        if len(v.split()) < 2:
            raise ValueError("describe the objective in a sentence (at least a few words)")
        return v


# -- learning ---------------------------------------------------------------------------
class ExpectationScore(_Model):
    """How well a specialist met one of the expectations in its definition."""

    expectation: str = Field(min_length=1, max_length=300)
    score: int = Field(ge=1, le=5, description="1 = not met, 3 = partly, 5 = fully")
    evidence: str = Field("", max_length=1000, description="the feedback, reviews or outputs that show it")


class Evaluation(_Model):
    """The Learning & Performance Manager's evaluation of one specialist."""

    thinking: str = Field("", max_length=20000)
    scores: list[ExpectationScore] = Field(default_factory=list, max_length=20)
    strengths: list[str] = Field(default_factory=list, max_length=10)
    weaknesses: list[str] = Field(default_factory=list, max_length=10)
    lessons: list[str] = Field(default_factory=list, max_length=5,
                               description="short, actionable lessons the specialist should remember next time")
    propose_revision: bool = False
    revised_system_message: str = Field("", max_length=8000, description="the complete new system message, when proposing one")
    reason: str = Field("", max_length=2000, description="why the revision helps, citing the evidence")

    @field_validator("lessons")
    @classmethod
    def _lessons(cls, v: list[str]) -> list[str]:
        out = []
        for lesson in v:
            lesson = " ".join(lesson.split())
            if len(lesson) > 300:
                raise ValueError("each lesson must be short: at most 300 characters")
            if lesson and lesson not in out:
                out.append(lesson)
        return out

    @model_validator(mode="after")
    def _revision_complete(self) -> "Evaluation":
        if self.propose_revision:
            if len(self.revised_system_message.strip()) < 20:
                raise ValueError("propose_revision needs the complete new system message in revised_system_message")
            if not self.reason.strip():
                raise ValueError("propose_revision needs a reason")
        return self

    @property
    def mean_score(self) -> float | None:
        return round(sum(s.score for s in self.scores) / len(self.scores), 2) if self.scores else None
