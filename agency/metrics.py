"""Prometheus metrics, fed by the core's hooks and served on ``[metrics] host:port``.

Off by default (``metrics.port = 0``). Everything lives in a dedicated
:class:`prometheus_client.CollectorRegistry` (never the process-global one), so
several services, and tests, can each have their own.

- Counters and histograms move as things happen: every recorded LLM call
  (``LLMClient.observers``) and every delivered chat message
  (``OutboxDispatcher.observers``).
- Gauges of state (projects and tasks by state, outbox depth) and counts of
  engine events (escalations, revisions, budget warnings ...) come from the
  database. They are refreshed in the event loop after each committed change
  (``Engine.on_change``, debounced) and every few seconds, and the scrape reads
  that snapshot: the HTTP server's thread never touches the database.

Metric names are listed in ``docs/observability.md``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from agency.db.tables import EventRow, LLMCallRow, MessageRow, ProjectRow, TaskRow
from agency.errors import SettingsError
from agency.models import PROJECT_STATES, TASK_STATES

if TYPE_CHECKING:
    from agency.db.session import Database
    from agency.llm.client import LLMClient
    from agency.ports import OutboundMessage
    from agency.service import AgencyService
    from agency.settings import Settings

log = logging.getLogger(__name__)

ESCALATION_EVENTS = ("escalated", "escalated_to_director", "tier_escalated")
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
CHAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class StateSnapshot:
    """What the database said at the last refresh (replaced whole, never mutated: the scrape thread reads it)."""

    projects: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    outbox_depth: int = 0
    events: dict[str, int] = field(default_factory=dict)
    refreshed: bool = False


class _StateCollector:
    """Gauges and counts read from the last :class:`StateSnapshot` at scrape time."""

    def __init__(self, metrics: AgencyMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot
        projects = GaugeMetricFamily("ateams_projects", "Projects by state.", labels=["state"])
        for state in sorted({*PROJECT_STATES, *snap.projects}):
            projects.add_metric([state], snap.projects.get(state, 0))
        yield projects
        tasks = GaugeMetricFamily("ateams_tasks", "Tasks by state (all projects).", labels=["state"])
        for state in sorted({*TASK_STATES, *snap.tasks}):
            tasks.add_metric([state], snap.tasks.get(state, 0))
        yield tasks
        yield GaugeMetricFamily("ateams_outbox_depth", "Outbound chat messages waiting for delivery.", value=snap.outbox_depth)
        esc = CounterMetricFamily("ateams_escalations", "Escalations: to the PM, to the Director, and to a stronger model tier.", labels=["kind"])
        for kind in ESCALATION_EVENTS:
            esc.add_metric([kind], snap.events.get(kind, 0))
        yield esc
        events = CounterMetricFamily("ateams_engine_events", "Engine events recorded, by kind.", labels=["kind"])
        for kind, n in sorted(snap.events.items()):
            events.add_metric([kind], n)
        yield events
        llm = self.metrics.llm
        if llm is not None:
            breaker = llm.breaker
            yield CounterMetricFamily("ateams_llm_circuit_trips", "Times a model's circuit breaker opened.", value=breaker.trips)
            opened = GaugeMetricFamily("ateams_llm_circuit_open", "1 while calls to the model are paused by the circuit breaker.", labels=["model"])
            for _name, (_provider, model) in llm.models.tiers.items():
                opened.add_metric([model], 1 if breaker.is_open(model) else 0)
            yield opened


class AgencyMetrics:
    """The agency's metrics in one registry; :meth:`attach` plugs them into a service."""

    def __init__(self, registry: CollectorRegistry | None = None, *, refresh_seconds: float = 5.0) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.refresh_seconds = refresh_seconds
        r = self.registry
        self.llm_calls = Counter("ateams_llm_calls", "LLM calls recorded, by model, tier, role, purpose and outcome.",
                                 ["model", "tier", "role", "purpose", "outcome"], registry=r)
        self.llm_latency = Histogram("ateams_llm_latency_seconds", "LLM call latency (retries included).",
                                     ["model", "role"], buckets=LLM_BUCKETS, registry=r)
        self.llm_tokens = Counter("ateams_llm_tokens", "Tokens used, by model, role and direction (prompt|completion).",
                                  ["model", "role", "direction"], registry=r)
        self.llm_cost = Counter("ateams_llm_cost_usd", "Cost in USD at the configured prices, by model and role.",
                                ["model", "role"], registry=r)
        self.chat_messages = Counter("ateams_chat_messages", "Chat messages delivered (sent or edited), by kind.",
                                     ["kind"], registry=r)
        self.chat_latency = Histogram("ateams_chat_send_seconds", "Time the chat platform took to accept a message.",
                                      ["kind"], buckets=CHAT_BUCKETS, registry=r)
        self.snapshot = StateSnapshot()
        self.registry.register(_StateCollector(self))
        self.db: Database | None = None
        self.llm: LLMClient | None = None
        self.server: MetricsServer | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._detach: list[Any] = []

    # -- hooks ---------------------------------------------------------------------------------
    def observe_call(self, row: LLMCallRow) -> None:
        """``LLMClient.observers``: one recorded call."""
        model, role = row.model or "unknown", row.role or "unknown"
        self.llm_calls.labels(model, row.tier or "", role, row.purpose or "", row.outcome or "").inc()
        self.llm_latency.labels(model, role).observe(max(float(row.latency_ms or 0.0), 0.0) / 1000)
        self.llm_tokens.labels(model, role, "prompt").inc(max(int(row.prompt_tokens or 0), 0))
        self.llm_tokens.labels(model, role, "completion").inc(max(int(row.completion_tokens or 0), 0))
        self.llm_cost.labels(model, role).inc(max(float(row.cost_usd or 0.0), 0.0))

    def observe_send(self, message: OutboundMessage, seconds: float) -> None:
        """``OutboxDispatcher.observers``: one delivered message."""
        self.chat_messages.labels(message.kind).inc()
        self.chat_latency.labels(message.kind).observe(max(seconds, 0.0))
        self.changed()

    def changed(self, _project_id: int | None = None) -> None:
        """``Engine.on_change``: state moved; refresh the gauges soon."""
        self._dirty.set()

    # -- state gauges ----------------------------------------------------------------------------
    async def refresh(self) -> StateSnapshot:
        """Read the state gauges from the database now."""
        if self.db is None:
            return self.snapshot
        async with self.db.session() as s:
            projects = dict((await s.execute(select(ProjectRow.status, func.count(ProjectRow.id)).group_by(ProjectRow.status))).all())
            tasks = dict((await s.execute(select(TaskRow.status, func.count(TaskRow.id)).group_by(TaskRow.status))).all())
            depth = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status == "pending"))).scalar()
            events = dict((await s.execute(select(EventRow.kind, func.count(EventRow.id)).group_by(EventRow.kind))).all())
        self.snapshot = StateSnapshot(projects={k: int(v) for k, v in projects.items()}, tasks={k: int(v) for k, v in tasks.items()},
                                      outbox_depth=int(depth or 0), events={k: int(v) for k, v in events.items()}, refreshed=True)
        return self.snapshot

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metrics refresh failed")
            await asyncio.sleep(0.2)  # debounce: at most five refreshes a second

    # -- lifecycle -------------------------------------------------------------------------------
    def attach(self, service: AgencyService) -> AgencyMetrics:
        """Subscribe to the service's hooks and start refreshing the state gauges (needs a running loop)."""
        self.db, self.llm = service.db, service.llm
        service.llm.observers.append(self.observe_call)
        service.engine.on_change.append(self.changed)
        self._detach = [(service.llm.observers, self.observe_call), (service.engine.on_change, self.changed)]
        if service.dispatcher is not None:
            service.dispatcher.observers.append(self.observe_send)
            self._detach.append((service.dispatcher.observers, self.observe_send))
        self._task = asyncio.create_task(self._refresh_loop(), name="metrics-refresh")
        self._dirty.set()
        return self

    async def close(self) -> None:
        for hooks, fn in self._detach:
            with contextlib.suppress(ValueError):
                hooks.remove(fn)
        self._detach = []
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None


@dataclass
class MetricsServer:
    """The ``/metrics`` HTTP endpoint (prometheus_client's server on a daemon thread)."""

    httpd: Any
    thread: threading.Thread

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (``port=0``: any free port; read it from ``.port``)."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    server = MetricsServer(httpd, thread)
    log.info("metrics: serving on %s", server.url)
    return server


def start_metrics_server(settings: Settings, registry: CollectorRegistry) -> MetricsServer | None:
    """The endpoint from ``[metrics]``; None when ``metrics.port`` is 0 (off, the default)."""
    if not settings.metrics.port:
        return None
    return serve_metrics(registry, settings.metrics.host, settings.metrics.port)


def install_metrics(service: AgencyService, *, registry: CollectorRegistry | None = None) -> AgencyMetrics | None:
    """Metrics for a built service when ``[metrics] port`` is set: hooks, the endpoint, cleanup on ``service.close``.

    Sets ``service.metrics``; returns None (and does nothing) when metrics are off.
    """
    if not service.settings.metrics.port:
        return None
    metrics = AgencyMetrics(registry)
    m = service.settings.metrics
    try:
        metrics.server = start_metrics_server(service.settings, metrics.registry)
    except OSError as e:
        raise SettingsError(f"Cannot serve metrics on {m.host}:{m.port} ({e.strerror or e}); change `metrics.port` "
                            "(env ATEAMS_METRICS__PORT) or set it to 0 to turn metrics off.") from None
    metrics.attach(service)
    service.metrics = metrics  # type: ignore[attr-defined]
    service.on_close(metrics.close)
    return metrics
