"""The task graph: pure functions over ``{task_id: [dependency ids]}``.

Validation names every problem (each cycle with its path), so a rejected plan
goes back to the PM with reasons it can act on.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

Graph = Mapping[str, Iterable[str]]


def find_cycles(graph: Graph) -> list[list[str]]:
    """Every elementary cycle reachable by DFS, each as a path ``[a, b, ..., a]`` (one per back edge)."""
    deps = {k: list(v) for k, v in graph.items()}
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(deps, WHITE)
    cycles: list[list[str]] = []
    for root in sorted(deps):
        if color[root] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = GREY
        while stack:
            node, i = stack[-1]
            children = [c for c in deps[node] if c in deps]
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if color[child] == GREY:
                    start = path.index(child)
                    cycles.append(path[start:] + [child])
                elif color[child] == WHITE:
                    color[child] = GREY
                    stack.append((child, 0))
                    path.append(child)
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return cycles


def validate(
    task_ids: list[str],
    depends_on: Mapping[str, list[str]],
    *,
    streams: Mapping[str, str] | None = None,
    assignees: Mapping[str, str] | None = None,
    known_streams: Iterable[str] | None = None,
    known_assignees: Iterable[str] | None = None,
) -> list[str]:
    """Return a list of human-readable problems; empty means the graph can run."""
    problems: list[str] = []
    seen: set[str] = set()
    for t in task_ids:
        if t in seen:
            problems.append(f"task id {t} is used more than once; give each task a unique id")
        seen.add(t)
    for t in task_ids:
        for d in depends_on.get(t, []):
            if d == t:
                problems.append(f"task {t} depends on itself")
            elif d not in seen:
                problems.append(f"task {t} depends on unknown task {d}")
    if streams is not None:
        ks = set(known_streams or [])
        for t in task_ids:
            s = streams.get(t) or ""
            if not s:
                problems.append(f"task {t} has no stream; set `stream` to one of: {', '.join(sorted(ks)) or '(define a stream)'}")
            elif known_streams is not None and s not in ks:
                problems.append(f"task {t} is in unknown stream {s!r}; streams are: {', '.join(sorted(ks))}")
    if assignees is not None:
        ka = set(known_assignees or [])
        for t in task_ids:
            a = assignees.get(t) or ""
            if not a:
                problems.append(f"task {t} has no assignee; set `assignee` to a specialist handle")
            elif known_assignees is not None and a not in ka:
                problems.append(f"task {t} is assigned to unknown member @{a}; staff it under `specialists` or use one of: {', '.join(sorted(ka))}")
    graph = {t: [d for d in depends_on.get(t, []) if d != t] for t in dict.fromkeys(task_ids)}
    for cyc in find_cycles(graph):
        problems.append("dependency cycle: " + " -> ".join(cyc))
    return problems


def ready(depends_on: Mapping[str, Iterable[str]], done: set[str], started: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Tasks not yet started whose dependencies are all done, in id order."""
    return sorted(t for t, deps in depends_on.items() if t not in done and t not in started and all(d in done for d in deps))


def layers(depends_on: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Topological layers: layer 0 has no dependencies. Raises ValueError on a cycle."""
    deps = {t: set(d) for t, d in depends_on.items()}
    out: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(deps):
        layer = sorted(t for t, d in deps.items() if t not in placed and d <= placed)
        if not layer:
            raise ValueError("the graph has a cycle")
        out.append(layer)
        placed.update(layer)
    return out


def critical_path(depends_on: Mapping[str, Iterable[str]], cost: Mapping[str, float] | None = None) -> tuple[list[str], float]:
    """The longest chain (by summed ``cost``, default 1 per task) and its length."""
    deps = {t: list(d) for t, d in depends_on.items()}
    best: dict[str, tuple[float, str | None]] = {}
    for layer in layers(deps):
        for t in layer:
            c = (cost or {}).get(t, 1.0)
            prev = max(((best[d][0], d) for d in deps[t]), default=(0.0, None))
            best[t] = (prev[0] + c, prev[1])
    if not best:
        return [], 0.0
    end = max(best, key=lambda t: (best[t][0], t))
    path = [end]
    while best[path[-1]][1] is not None:
        path.append(best[path[-1]][1])  # type: ignore[arg-type]
    return list(reversed(path)), best[end][0]
