"""The benchmark scenarios, run through the real engine, database and OpenAI provider.

Only the model server is mocked: :class:`bench.mock_openai.MockOpenAIServer`
on 127.0.0.1, answering with :class:`bench.roles.RoleHandler`. By default
(``MOCK = "process"``) it runs in a child process (:class:`bench.mock_openai.MockProcess`),
so its work shares neither the engine's CPU time, nor its interpreter lock, nor
its event loop; ``MOCK = "thread"`` runs it as before in a thread of the engine's
process (its own event loop, its CPU subtracted, but the same interpreter lock),
for comparing the two. Every run uses a fresh SQLite database in a temporary
folder, oversight ``autonomous`` and memory disabled.

Each ``scenario_*`` coroutine returns a dict of figures plus ``checks``
(correctness only: every project done, every planned task done, the server's
calls equal the recorded ``llm_calls`` rows and the expected count, the
tokens the server counted equal the recorded ones). Timings are reported,
never asserted.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import func, select

from agency.console import ConsoleChat
from agency.db.tables import LLMCallRow, MessageRow, ProjectRow, TaskRow
from agency.models import Actor
from agency.service import AgencyService
from agency.settings import load_settings
from agency.wiring import build_service, tune_gc
from bench.mock_openai import MockOpenAIServer, MockProcess
from bench.plans import (
    Shape,
    critical_calls,
    make_plan,
    parse_shape,
    shape_tag,
    specialists,
    total_calls,
)
from bench.roles import RoleHandler

# ``python -m bench`` runs each scenario in a fresh process and tunes the collector there as the
# product does; the smoke test runs in pytest's process and leaves its collector alone
TUNE_GC = False
# where the mock server runs: "process" (a child process: a fair comparison) or "thread" (the
# engine's process, as until December 2026; ``python -m bench --mock thread``)
MOCK = "process"
MOCK_MODES = ("process", "thread")

log = logging.getLogger(__name__)

__all__ = [
    "MOCK",
    "LagTicker",
    "MockThread",
    "rss_mb",
    "run_batch",
    "scenario_critical_path",
    "scenario_memory_recall",
    "scenario_overhead",
    "scenario_scale",
    "scenario_tokens",
]

AGENCY = "bench"
DIRECTOR = Actor(name="Director", external_user_id="bench-director", is_director=True)
ROLES = ("pm", "collaborator", "specialist", "learning")


# -- measuring ---------------------------------------------------------------------------------
class MockThread:
    """The mock server on its own thread and event loop; ``cpu_seconds()`` is that thread's CPU time.

    It shares the engine's process and interpreter lock (:class:`bench.mock_openai.MockProcess` does
    not); it has the same ``base_url``, ``stats()``, ``reset()`` and ``set()``.
    """

    def __init__(self, handler: Any, *, latency: float = 0.0, jitter: float = 0.0, seed: int = 0) -> None:
        self.server = MockOpenAIServer(handler, latency=latency, jitter=jitter, seed=seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="mock-openai", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("the mock server did not start") from self._error
        return self.server.base_url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as e:  # pragma: no cover - port trouble
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def cpu_seconds(self) -> float:
        if self._thread is None or self._thread.ident is None or not self._thread.is_alive():
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return 0.0

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def reset(self) -> None:
        """Zero the server's counters and the handler's (call between runs, with nothing in flight)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(_call(self.server.reset), self._loop).result(5)
        if callable(getattr(self.server.handler, "reset", None)):
            self.server.handler.reset()  # type: ignore[attr-defined]

    def set(self, *, latency: float) -> None:
        self.server.latency = latency

    def stats(self) -> dict[str, Any]:
        """As :meth:`bench.mock_openai.MockProcess.stats`; ``cpu_s`` is the server thread's."""
        srv, handler = self.server, self.server.handler
        return {
            "calls": srv.calls, "answered": srv.answered, "faults": srv.faults,
            "prompt_tokens": srv.prompt_tokens, "completion_tokens": srv.completion_tokens,
            "latency": srv.latency, "cpu_s": self.cpu_seconds(),
            "handler": handler.stats() if callable(getattr(handler, "stats", None)) else None,  # type: ignore[attr-defined]
        }

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn: Any) -> Any:
    return fn()


class LagTicker:
    """Event-loop lag: a task asks to wake every ``interval`` s and records how late it woke."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - t - self.interval))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def figures(self) -> dict[str, float]:
        if not self.lags:
            return {"loop_lag_max_ms": 0.0, "loop_lag_p99_ms": 0.0, "loop_lag_p50_ms": 0.0}
        lags = sorted(self.lags)
        return {
            "loop_lag_max_ms": round(lags[-1] * 1000, 2),
            "loop_lag_p99_ms": round(_pct(lags, 99) * 1000, 2),
            "loop_lag_p50_ms": round(_pct(lags, 50) * 1000, 2),
        }


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """The current resident set size in MB."""
    v = _proc_status("VmRSS")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """The peak RSS in MB since the last :func:`reset_peak_rss` (VmHWM; else ru_maxrss, since start)."""
    v = _proc_status("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def _no_config_file(tmp: Path) -> Iterator[None]:
    """Make sure no config.toml is read: point ATEAMS_CONFIG at a file that does not exist."""
    old = os.environ.get("ATEAMS_CONFIG")
    os.environ["ATEAMS_CONFIG"] = str(tmp / "no-config.toml")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ATEAMS_CONFIG", None)
        else:
            os.environ["ATEAMS_CONFIG"] = old


def _db_size_mb(data_dir: Path) -> float:
    return sum(p.stat().st_size for p in data_dir.glob("ateams.db*") if p.is_file()) / 1e6


# -- one batch of projects ------------------------------------------------------------------------
async def run_batch(
    shape: Shape | str,
    *,
    projects: int = 1,
    latency: float = 0.0,
    jitter: float = 0.0,
    tmp_dir: str | Path | None = None,
    warmup: bool = False,
    lag: bool = True,
    mode: str = "json_schema",
    llm_concurrency: int = 256,
    project_concurrency: int | None = None,
    output_chars: int = 1200,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run ``projects`` projects of ``shape`` at once against the mock and measure them.

    ``warmup`` first runs one project of the same shape at 0 latency (not
    measured) so one-off costs (SQL compilation caches, the HTTP connection,
    lazy imports, creating the agency's members) stay out of the figures.
    """
    shape = parse_shape(shape) if isinstance(shape, str) else shape
    with tempfile.TemporaryDirectory(prefix="ateams-bench-") as auto_dir:
        base = Path(tmp_dir) if tmp_dir is not None else Path(auto_dir)
        data_dir = base / f"run-{shape}-{projects}-{time.monotonic_ns()}".replace(":", "_")
        data_dir.mkdir(parents=True, exist_ok=True)
        with _mock(shape, output_chars, latency, jitter) as mock, _no_config_file(data_dir):
            settings = load_settings(
                data_dir=data_dir,
                dry_run=False,
                log_level="WARNING",
                llm={"base_url": mock.base_url, "mode": mode, "concurrency": llm_concurrency,
                     "timeout_seconds": max(30.0, latency * 10 + 30)},
                engine={"project_concurrency": project_concurrency or max(4, shape.max_width),
                        "default_oversight": "autonomous"},
                memory={"enabled": False},
            )
            chat = ConsoleChat(quiet=True)
            service = await build_service(settings, chat)  # as the CLI and the bot build it: learning on, memory off
            try:
                return await _measure(service, chat, mock, shape, projects, latency, warmup, lag, timeout, data_dir)
            finally:
                await service.close()


def _mock(shape: Shape, output_chars: int, latency: float, jitter: float) -> MockProcess | MockThread:
    """The mock server, answering with :class:`RoleHandler`, where :data:`MOCK` says."""
    if MOCK == "thread":
        return MockThread(RoleHandler(shape, output_chars=output_chars), latency=latency, jitter=jitter)
    if MOCK != "process":
        raise ValueError(f"MOCK is one of {MOCK_MODES}, not {MOCK!r}")
    return MockProcess("bench.roles:RoleHandler", {"shape": str(shape), "output_chars": output_chars},
                       latency=latency, jitter=jitter)


def _cpu_here(mock: MockProcess | MockThread) -> float:
    """The CPU time the mock spent inside this process (to leave out of the engine's)."""
    return mock.cpu_seconds() if isinstance(mock, MockThread) else 0.0


async def _run_projects(service: AgencyService, shape: Shape, n: int, timeout: float, timing: dict[str, float] | None = None) -> list[int]:
    pids = []
    t0 = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(0)  # each /project new is its own event, as when Directors send them: other work runs in between
        info = await service.new_project(
            AGENCY, f"Benchmark project {i + 1}: write a short report on espresso grinders {shape_tag(shape)}",
            oversight="autonomous", actor=DIRECTOR,
        )
        pids.append(info.id)
    if timing is not None:
        timing["create_s"] = time.perf_counter() - t0
    # each project's runner ends after the project (and its on-done hooks: the Learning Manager);
    # a blocked project's runner waits for the Director, so every second look for runners whose
    # project waits for someone
    runners = {asyncio.ensure_future(service.engine.wait_project(p)): p for p in pids}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            _, pending = await asyncio.wait(runners, timeout=1.0)
            if not pending:
                break
            waiting = {runners[r] for r in pending}
            async with service.db.session() as s:
                stuck = (await s.execute(select(func.count(ProjectRow.id)).where(
                    ProjectRow.id.in_(waiting), ProjectRow.status.in_(_WAITING)))).scalar()
            if stuck == len(waiting):
                log.error("%d project(s) stopped without finishing (blocked, paused or awaiting the Director)", stuck)
                break
        else:
            log.error("projects did not finish within %s s", timeout)
    finally:
        for r in runners:
            r.cancel()
    return pids


_WAITING = ("blocked", "paused", "awaiting_approach", "awaiting_plan")


async def _measure(service: AgencyService, chat: ConsoleChat, mock: MockProcess | MockThread, shape: Shape,
                   n: int, latency: float, warmup: bool, lag: bool, timeout: float, data_dir: Path) -> dict[str, Any]:
    await service.ensure_agency(AGENCY, "Benchmark agency")
    await service.start()
    if warmup:  # one project of the same shape at 0 latency: also creates the agency's members
        mock.set(latency=0.0)
        await _run_projects(service, shape, 1, timeout)
        mock.set(latency=latency)
        await service.settle()  # the due status updates posted, the outbox delivered
        mock.reset()  # its counters and the handler's
    mock_cpu0 = mock.stats()["cpu_s"]
    if TUNE_GC:
        tune_gc()  # as the terminal and the bot do once started
    else:
        gc.collect()
    reset_peak_rss()
    rss0 = rss_mb()
    ticker = LagTicker()
    if lag:
        ticker.start()
    cpu0, srv0, t0, wall0 = time.process_time(), _cpu_here(mock), time.perf_counter(), time.time()
    timing: dict[str, float] = {}
    pids = await _run_projects(service, shape, n, timeout, timing)
    runners_s = time.perf_counter() - t0  # the runners end after the Learning Manager's evaluations
    cpu_done = time.process_time() - cpu0 - (_cpu_here(mock) - srv0)
    # the outbox and the status message still have work: count it, it is orchestration
    t1 = time.perf_counter()
    await service.settle()  # the due status updates posted, the outbox delivered
    drain_s = time.perf_counter() - t1
    cpu_all = time.process_time() - cpu0 - (_cpu_here(mock) - srv0)
    await ticker.stop()
    peak = peak_rss_mb()

    srv = mock.stats()
    counted = srv["handler"] or {}
    by_schema: dict[str, int] = counted.get("by_schema", {})
    async with service.db.session() as s:
        prows = list((await s.execute(select(ProjectRow).where(ProjectRow.id.in_(pids)))).scalars())
        statuses = {p.id: p.status for p in prows}
        failed = [{"project": p.id, "status": p.status, "error": (p.error or "")[:300]} for p in prows if p.status != "done"]
        spans = [(p.finished_at - p.created_at).total_seconds() for p in prows if p.finished_at]
        # the makespan ends when the last deliverable is committed (status done)
        makespan = max((p.finished_at.timestamp() - wall0 for p in prows if p.finished_at), default=runners_s)
        done_tasks = (await s.execute(select(func.count(TaskRow.id)).where(TaskRow.project_id.in_(pids), TaskRow.status == "done"))).scalar() or 0
        all_tasks = (await s.execute(select(func.count(TaskRow.id)).where(TaskRow.project_id.in_(pids)))).scalar() or 0
        by_role_rows = (await s.execute(
            select(LLMCallRow.role, func.count(LLMCallRow.id), func.coalesce(func.sum(LLMCallRow.prompt_tokens), 0),
                   func.coalesce(func.sum(LLMCallRow.completion_tokens), 0))
            .where(LLMCallRow.project_id.in_(pids)).group_by(LLMCallRow.role))).all()
        task_calls = (await s.execute(select(func.count(LLMCallRow.id)).where(LLMCallRow.project_id.in_(pids), LLMCallRow.task_id.is_not(None)))).scalar() or 0
        bad_outcomes = (await s.execute(select(func.count(LLMCallRow.id)).where(LLMCallRow.project_id.in_(pids), LLMCallRow.outcome != "ok"))).scalar() or 0
        pending_out = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status == "pending"))).scalar() or 0
        msgs = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.project_id.in_(pids), MessageRow.direction == "out"))).scalar() or 0
    by_role = {r: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0} for r in ROLES}
    for role, calls, pt, ct in by_role_rows:
        by_role[role] = {"calls": int(calls), "prompt_tokens": int(pt), "completion_tokens": int(ct)}
    rows = sum(v["calls"] for v in by_role.values())
    prompt = sum(v["prompt_tokens"] for v in by_role.values())
    completion = sum(v["completion_tokens"] for v in by_role.values())
    path, chain_calls = critical_calls(shape)
    n_tasks = len(make_plan(shape)["tasks"])
    expected_calls = total_calls(shape, learning=service.learning is not None) * n
    evaluations = specialists(shape) * n if service.learning is not None else 0
    bound = chain_calls * latency
    db_mb = _db_size_mb(data_dir)
    stats = [service.engine.stats.get(p) for p in pids]

    checks = {
        "projects_done": all(statuses.get(p) == "done" for p in pids),
        "tasks_done_equal_planned": done_tasks == all_tasks == n_tasks * n,
        "server_calls_equal_recorded_calls": srv["calls"] == rows == srv["answered"],
        "calls_equal_expected": rows == expected_calls,
        "every_specialist_evaluated": by_schema.get("Evaluation", 0) == by_role["learning"]["calls"] == evaluations,
        "server_tokens_equal_recorded_tokens": srv["prompt_tokens"] == prompt and srv["completion_tokens"] == completion,
        "every_call_ok": bad_outcomes == 0,
        "outbox_drained": pending_out == 0,
    }
    result: dict[str, Any] = {
        "shape": str(shape),
        "projects": n,
        "tasks_per_project": n_tasks,
        "latency_s": latency,
        "makespan_s": round(makespan, 3),
        "create_s": round(timing.get("create_s", 0.0), 3),
        "learning_after_done_s": round(max(0.0, runners_s - makespan), 3),
        "project_makespan_s_mean": round(statistics.mean(spans), 3) if spans else None,
        "project_makespan_s_max": round(max(spans), 3) if spans else None,
        "critical_path": path,
        "critical_path_calls": chain_calls,
        "bound_s": round(bound, 3),
        "over_bound_pct": round((makespan / bound - 1) * 100, 2) if bound else None,
        "over_bound_s": round(makespan - bound, 3),
        "model_calls": rows,
        "server_calls": srv["calls"],
        "expected_calls": expected_calls,
        "cpu_s": round(cpu_all, 3),
        "cpu_s_until_done": round(cpu_done, 3),
        "cpu_ms_per_call": round(cpu_all / rows * 1000, 2) if rows else None,
        "wall_ms_per_call": round(runners_s / rows * 1000, 2) if rows else None,
        "runners_s": round(runners_s, 3),
        "outbox_drain_after_done_s": round(max(0.0, drain_s), 3),
        "messages_out": msgs,
        "messages_delivered": len(chat.sent) + len(chat.edits),
        "max_in_flight": max((st.max_in_flight for st in stats if st), default=0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "server_prompt_tokens": srv["prompt_tokens"],
        "server_completion_tokens": srv["completion_tokens"],
        "task_calls": task_calls,
        "by_role": by_role,
        "by_schema": dict(by_schema),
        "mock": "thread" if isinstance(mock, MockThread) else "process",
        "mock_cpu_s": round(srv["cpu_s"] - mock_cpu0, 3),  # the server's own CPU (never the engine's)
        "rss_start_mb": round(rss0, 1),
        "peak_rss_mb": round(peak, 1),
        "db_mb": round(db_mb, 2),
        "checks": checks,
        "ok": all(checks.values()),
    }
    if failed:
        result["failed_projects"] = failed
    if n == 1 and result["ok"]:
        result["critical_path_gaps_ms"] = _gaps([tuple(e) for e in counted.get("log", [])], path, t0, t0 + makespan, latency)
    if lag:
        result.update(ticker.figures())
    return result


def _gaps(log: list[tuple[float, str, str]], path: list[str], start: float, end: float, latency: float) -> list[list[Any]]:
    """Engine time between the model calls on one project's critical path: [from, to, ms].

    A call is answered ``latency`` after it arrived, so the time from one answer
    to the next arrival is the orchestration the critical path waited for.
    """
    chain = [("ApproachSet", ""), ("WorkPlan", "")]
    for key in path:
        chain += [("AgentTurn", key), ("Review", key)]
    chain.append(("Deliverable", ""))
    when = {(name, key): t for t, name, key in log}
    out: list[list[Any]] = []
    prev_label, prev_done = "start", start
    for name, key in chain:
        t = when.get((name, key))
        if t is None:
            return []
        label = f"{name} {key}".strip()
        out.append([prev_label, label, round((t - latency - prev_done) * 1000, 1)])
        prev_label, prev_done = label, t
    out.append([prev_label, "done", round((end - prev_done) * 1000, 1)])
    return out


# -- scenarios -----------------------------------------------------------------------------------
FULL: dict[str, dict[str, Any]] = {
    "critical_path": {"shapes": ["aggregate:8", "layered:4x3"], "latency": 0.5},
    "overhead": {"shapes": ["aggregate:8", "layered:4x3"]},
    "tokens": {"shapes": ["aggregate:8", "layered:4x3"]},
    "scale": {"projects": [1, 10, 100], "shape": "aggregate:2", "latency": 0.05},
    "memory_recall": {"sizes": [1000, 10000], "queries": 50},
}
QUICK: dict[str, dict[str, Any]] = {
    "critical_path": {"shapes": ["aggregate:2"], "latency": 0.05},
    "overhead": {"shapes": ["aggregate:2"]},
    "tokens": {"shapes": ["aggregate:2"]},
    "scale": {"projects": [1, 3], "shape": "aggregate:1", "latency": 0.02},
    "memory_recall": {"sizes": [200], "queries": 10},
}


async def scenario_critical_path(shapes: list[str], latency: float = 0.5, tmp_dir: str | Path | None = None) -> dict[str, Any]:
    """Makespan of one project against its critical-path bound (calls on the longest chain x latency)."""
    out: dict[str, Any] = {"latency_s": latency, "cases": {}}
    for sh in shapes:
        r = await run_batch(sh, latency=latency, tmp_dir=tmp_dir, warmup=True)
        out["cases"][r["shape"]] = r
    return out


async def scenario_overhead(shapes: list[str], tmp_dir: str | Path | None = None) -> dict[str, Any]:
    """The same projects at 0 latency: wall and CPU time per orchestrated model call."""
    out: dict[str, Any] = {"cases": {}}
    for sh in shapes:
        r = await run_batch(sh, latency=0.0, tmp_dir=tmp_dir, warmup=True, lag=False)
        out["cases"][r["shape"]] = r
    return out


async def scenario_tokens(shapes: list[str], tmp_dir: str | Path | None = None) -> dict[str, Any]:
    """Model calls and tokens per task and per project, split by role."""
    out: dict[str, Any] = {"cases": {}}
    for sh in shapes:
        r = await run_batch(sh, latency=0.0, tmp_dir=tmp_dir, lag=False)
        n, tasks = r["projects"], r["tasks_per_project"] * r["projects"]
        case = {
            "shape": r["shape"],
            "tasks": tasks,
            "calls_per_project": r["model_calls"] / n,
            "prompt_tokens_per_project": r["prompt_tokens"] / n,
            "completion_tokens_per_project": r["completion_tokens"] / n,
            "task_calls_per_task": r["task_calls"] / tasks,
            "prompt_tokens_per_task": round((r["by_role"]["specialist"]["prompt_tokens"] + r["by_role"]["collaborator"]["prompt_tokens"]) / tasks, 1),
            "by_role": {
                role: {**v, "prompt_tokens_per_call": round(v["prompt_tokens"] / v["calls"], 1) if v["calls"] else 0}
                for role, v in r["by_role"].items()
            },
            "checks": r["checks"],
            "ok": r["ok"],
        }
        out["cases"][r["shape"]] = case
    return out


async def scenario_scale(projects: list[int], shape: str = "aggregate:2", latency: float = 0.05,
                         tmp_dir: str | Path | None = None) -> dict[str, Any]:
    """1, 10, 100 projects at once in one process: makespan, peak RSS, event-loop lag, database size.

    In-process here (the smoke test); ``python -m bench`` runs each size in a fresh
    process so the peak RSS is that run's alone.
    """
    out: dict[str, Any] = {"shape": shape, "latency_s": latency, "cases": {}}
    for n in projects:
        r = await run_batch(shape, projects=n, latency=latency, tmp_dir=tmp_dir, warmup=True)
        out["cases"][str(n)] = r
    return out


async def scenario_memory_recall(sizes: list[int], queries: int = 50, tmp_dir: str | Path | None = None) -> dict[str, Any]:
    """Query latency p50/p95 with 1k and 10k stored memories (bench.memory_recall)."""
    from bench.memory_recall import run_memory_recall

    figures = await run_memory_recall(tuple(sizes), queries, tmp_dir)
    checks = {f"{size}_entries_stored": f["entries"] == int(size) for size, f in figures["sizes"].items()}
    checks["every_size_measured"] = sorted(int(s) for s in figures["sizes"]) == sorted(sizes)
    return {**figures, "checks": checks, "ok": all(checks.values())}


SCENARIOS: dict[str, Callable[..., Coroutine[Any, Any, dict[str, Any]]]] = {
    "critical_path": scenario_critical_path,
    "overhead": scenario_overhead,
    "tokens": scenario_tokens,
    "scale": scenario_scale,
    "memory_recall": scenario_memory_recall,
}
