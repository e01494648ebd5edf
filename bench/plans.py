"""Plan shapes for the benchmarks, as valid :class:`agency.schemas.WorkPlan` dicts.

Shapes (``kind:params``, also the spelling used on the command line and in a
project's objective, see :func:`shape_tag`):

- ``aggregate:N``   N independent tasks plus one aggregate task that depends on all of them;
- ``chain:N``       T1 -> T2 -> ... -> TN;
- ``diamond:W``     one source task, W parallel tasks after it, one sink after those;
- ``layered:WxD``   D layers of W tasks; every task of a layer depends on every task of the layer before.

The lower bound of a project's makespan (autonomous oversight, no revisions,
unlimited concurrency) is its longest chain of model calls times the latency:
approaches + plan + (work turn + review) per task on the critical path +
deliverable. The critical path comes from :func:`agency.dag.critical_path`.
The Learning Manager's evaluations come after the deliverable, off that path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agency import dag

__all__ = ["Shape", "parse_shape", "make_plan", "plan_deps", "critical_calls", "total_calls", "specialists", "shape_tag", "shape_from_text"]

# catalogue roles (specialists/*.toml): handles are reused across tasks of the same role
_ROLES = ["researcher", "analyst", "writer", "reviewer", "engineer"]
_CRITERIA = ["covers its part of the objective", "states its assumptions"]
# per project: approaches + plan + deliverable (autonomous oversight)
PROJECT_CALLS = 3
CALLS_PER_TASK = 2  # one work turn that submits + one review that accepts


@dataclass(frozen=True)
class Shape:
    kind: str  # aggregate | chain | diamond | layered
    width: int = 1
    depth: int = 1

    def __str__(self) -> str:
        if self.kind == "layered":
            return f"layered:{self.width}x{self.depth}"
        return f"{self.kind}:{self.width if self.kind != 'chain' else self.depth}"

    @property
    def label(self) -> str:
        return {
            "aggregate": f"{self.width}-wide aggregate",
            "chain": f"chain of {self.depth}",
            "diamond": f"diamond {self.width}-wide",
            "layered": f"{self.width}x{self.depth} layered",
        }[self.kind]

    @property
    def max_width(self) -> int:
        """The most tasks that can run at once."""
        return max(len(layer) for layer in dag.layers(plan_deps(make_plan(self))))


def parse_shape(text: str) -> Shape:
    """``aggregate:8``, ``chain:5``, ``diamond:3``, ``layered:4x3``."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    try:
        if kind == "aggregate":
            return Shape("aggregate", width=max(1, int(arg or 8)), depth=2)
        if kind == "chain":
            return Shape("chain", width=1, depth=max(1, int(arg or 4)))
        if kind == "diamond":
            return Shape("diamond", width=max(1, int(arg or 2)), depth=3)
        if kind == "layered":
            w, _, d = (arg or "4x3").lower().partition("x")
            return Shape("layered", width=max(1, int(w)), depth=max(1, int(d or 1)))
    except ValueError:
        pass
    raise ValueError(f"unknown plan shape {text!r}; use aggregate:N, chain:N, diamond:W or layered:WxD")


_TAG = re.compile(r"\[bench-shape=([a-z]+:[0-9x]+)\]")


def shape_tag(shape: Shape) -> str:
    """The marker put in a project's objective so the mock answers with this plan shape."""
    return f"[bench-shape={shape}]"


def shape_from_text(text: str) -> Shape | None:
    m = _TAG.search(text or "")
    return parse_shape(m.group(1)) if m else None


def _graph(shape: Shape) -> list[tuple[str, list[str], int]]:
    """(task id, dependencies, layer index) in id order."""
    out: list[tuple[str, list[str], int]] = []
    if shape.kind == "aggregate":
        ids = [f"T{i}" for i in range(1, shape.width + 1)]
        out = [(t, [], 0) for t in ids]
        out.append((f"T{shape.width + 1}", ids, 1))
    elif shape.kind == "chain":
        for i in range(1, shape.depth + 1):
            out.append((f"T{i}", [f"T{i - 1}"] if i > 1 else [], i - 1))
    elif shape.kind == "diamond":
        mid = [f"T{i}" for i in range(2, shape.width + 2)]
        out = [("T1", [], 0), *((t, ["T1"], 1) for t in mid), (f"T{shape.width + 2}", mid, 2)]
    elif shape.kind == "layered":
        prev: list[str] = []
        n = 0
        for layer in range(shape.depth):
            cur = []
            for _ in range(shape.width):
                n += 1
                cur.append(f"T{n}")
                out.append((f"T{n}", list(prev), layer))
            prev = cur
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")
    return out


def make_plan(shape: Shape, *, objective: str = "the benchmark objective") -> dict[str, Any]:
    """A WorkPlan dict (validates against :class:`agency.schemas.WorkPlan` and the engine's plan checks)."""
    graph = _graph(shape)
    n_layers = max(layer for _, _, layer in graph) + 1
    # one stream per layer (at most 4), one specialist per role used
    stream_of = {layer: f"stage-{min(layer, 3) + 1}" for layer in range(n_layers)}
    streams = sorted(set(stream_of.values()))
    tasks = []
    handles: dict[str, str] = {}
    for i, (tid, deps, layer) in enumerate(graph):
        role = _ROLES[i % len(_ROLES)]
        handle = f"{role.capitalize()}-A"
        handles[handle] = role
        tasks.append(
            {
                "id": tid,
                "title": f"Part {tid} of the work",
                "description": f"Produce part {tid} of {objective[:200]}"
                + (f", building on {', '.join(deps)}." if deps else "."),
                "stream": stream_of[layer],
                "assignee": handle,
                "depends_on": deps,
                "success_criteria": list(_CRITERIA),
                "scores": {"reasoning": 2, "domain": 3, "language": 3, "quality": 3},
            }
        )
    return {
        "thinking": f"A {shape.label} plan for the benchmark.",
        "summary": f"A {shape.label} plan of {len(tasks)} tasks in {len(streams)} stream(s).",
        "outputs": ["one Markdown document"],
        "success_criteria": ["every task accepted"],
        "streams": [
            {"key": key, "goal": f"Deliver the {key} tasks of the plan", "success_criteria": ["all tasks accepted"]}
            for key in streams
        ],
        "specialists": [{"handle": h, "role": r, "reuse": True} for h, r in handles.items()],
        "tasks": tasks,
    }


def plan_deps(plan: dict[str, Any]) -> dict[str, list[str]]:
    return {t["id"]: list(t.get("depends_on") or []) for t in plan["tasks"]}


def critical_calls(shape: Shape) -> tuple[list[str], int]:
    """The critical path of tasks and the number of model calls on the project's longest chain."""
    path, length = dag.critical_path(plan_deps(make_plan(shape)))
    return path, PROJECT_CALLS + CALLS_PER_TASK * int(length)


def total_calls(shape: Shape, *, learning: bool = False) -> int:
    """Model calls of a project of this shape when every turn submits and every review accepts
    (``learning``: plus the Learning Manager's evaluation of each specialist after delivery)."""
    plan = make_plan(shape)
    return PROJECT_CALLS + CALLS_PER_TASK * len(plan["tasks"]) + (len(plan["specialists"]) if learning else 0)


def specialists(shape: Shape) -> int:
    """How many specialists a plan of this shape staffs (each is evaluated after delivery)."""
    return len(make_plan(shape)["specialists"])
