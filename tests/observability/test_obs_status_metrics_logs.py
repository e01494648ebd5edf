"""Live status edited in place, Prometheus metrics over HTTP, structured logs without prompts or secrets."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.request

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from agency.console import ConsoleChat
from agency.db.repos import overview
from agency.errors import SettingsError
from agency.llm.scripted import ScriptedModel
from agency.logs import configure_logging
from agency.metrics import AgencyMetrics, install_metrics, serve_metrics, start_metrics_server
from agency.settings import MetricsSettings
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for
from tests.observability.obs_helpers import OBJECTIVE, free_port


# -- live status ------------------------------------------------------------------------------------
async def test_one_status_message_per_project_edited_in_place(make_service) -> None:
    chat = ConsoleChat(quiet=True)
    service = await make_service(ScriptedModel(delay=0.1), chat=chat)  # long enough to span several status updates
    a = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    b = await service.new_project(AGENCY, "Plan a neighbourhood seed swap", oversight="plan", actor=DIRECTOR)
    assert await drive(service, a.id) == "done"
    assert await drive(service, b.id) == "done"

    def final_edit(pid: int) -> bool:
        edits = [m for _, m in chat.edits if m.upsert_key == f"status:{pid}"]
        return bool(edits) and f"**Project #{pid}** - done - 5/5 tasks done" in edits[-1].content

    for pid in (a.id, b.id):
        await wait_for(lambda pid=pid: final_edit(pid))
    for pid in (a.id, b.id):
        sent = [m for m in chat.sent if m.kind == "status" and m.upsert_key == f"status:{pid}"]
        edits = [(ext, m) for ext, m in chat.edits if m.upsert_key == f"status:{pid}"]
        assert len(sent) == 1  # posted once ...
        # ... then edited, always that message (updates are debounced, so a fast project may need only a few)
        assert len(edits) >= 1 and {ext for ext, _ in edits} == {f"console-{sent[0].id}"}
        assert sent[0].space.address == overview(pid)
        last = edits[-1][1].content
        for part in ("#research:", "#production:", "Spend: $", "tokens in", "s elapsed"):
            assert part in last, part
        on_demand = await service.run_command(AGENCY, overview(pid), DIRECTOR, "/project status")
        assert on_demand.text.splitlines()[0] == last.splitlines()[0]  # /project status shows the same


# -- metrics ----------------------------------------------------------------------------------------------
def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict, name: str, **labels: str) -> float:  # noqa: ANN001
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, val) in ls for k, val in labels.items()))


async def test_metrics_endpoint_on_loopback_shows_counters_moving(make_service, settings) -> None:
    port = free_port()
    cfg = settings.model_copy(update={"metrics": MetricsSettings(port=port, host="127.0.0.1")})
    service = await make_service(ScriptedModel(), cfg=cfg)
    metrics = install_metrics(service)
    assert metrics is not None and service.metrics is metrics and metrics.server.port == port
    url = f"http://127.0.0.1:{port}/metrics"
    before = await asyncio.to_thread(_scrape, url)
    assert _total(before, "ateams_llm_calls_total") == 0
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    await wait_for(lambda: any(m.kind == "status" for m in service.chat.sent))
    service._status_task.cancel()  # no new status edits from here on, so the outbox can be drained to empty
    await asyncio.gather(service._status_task, return_exceptions=True)
    await service.settle()
    await metrics.refresh()
    after = await asyncio.to_thread(_scrape, url)
    calls = _total(after, "ateams_llm_calls_total")
    assert calls >= 9  # approaches, plan, 3 x (work + review) at least, deliver
    assert _total(after, "ateams_llm_calls_total", role="pm", purpose="plan", model="gpt-4o-mini", tier="fast", outcome="ok") == 1
    assert _total(after, "ateams_llm_latency_seconds_count") == calls
    assert _total(after, "ateams_llm_tokens_total", direction="prompt") > 0
    assert _total(after, "ateams_llm_tokens_total", role="collaborator", direction="completion") > 0
    assert _total(after, "ateams_llm_cost_usd_total", model="gpt-4o-mini") > 0
    assert _total(after, "ateams_chat_messages_total") > _total(before, "ateams_chat_messages_total")
    assert _total(after, "ateams_chat_send_seconds_count", kind="status") >= 1
    assert _total(after, "ateams_projects", state="done") == 1 and _total(after, "ateams_projects", state="running") == 0
    assert _total(after, "ateams_tasks", state="done") == 5
    assert _total(after, "ateams_outbox_depth") == 0
    assert ("ateams_escalations_total", (("kind", "tier_escalated"),)) in after
    assert _total(after, "ateams_engine_events_total", kind="delivered") == 1
    assert ("ateams_llm_circuit_trips_total", ()) in after
    await service.close()  # stops the endpoint too
    assert metrics.server is None


async def test_the_built_service_serves_metrics_when_a_port_is_set(settings) -> None:
    from agency.wiring import build_service
    from tests.conftest import model_set

    port = free_port()
    cfg = settings.model_copy(update={"metrics": MetricsSettings(port=port)})
    service = await build_service(cfg, ConsoleChat(quiet=True), models=model_set(ScriptedModel()))
    try:
        assert service.metrics.server.url == f"http://127.0.0.1:{port}/metrics"
        await service.metrics.refresh()
        samples = await asyncio.to_thread(_scrape, service.metrics.server.url)
        assert ("ateams_projects", (("state", "running"),)) in samples and ("ateams_outbox_depth", ()) in samples
    finally:
        await service.close()
    assert service.metrics.server is None


async def test_metrics_are_off_by_default_and_registries_are_independent(make_service, settings) -> None:
    assert settings.metrics.port == 0
    service = await make_service(ScriptedModel())
    assert install_metrics(service) is None and not hasattr(service, "metrics")
    one, two = AgencyMetrics(), AgencyMetrics()  # no clash: each has its own registry
    assert start_metrics_server(settings, one.registry) is None
    server = serve_metrics(two.registry, "127.0.0.1", 0)
    try:
        two.llm_calls.labels("m", "fast", "pm", "plan", "ok").inc()
        samples = await asyncio.to_thread(_scrape, server.url)
        assert _total(samples, "ateams_llm_calls_total") == 1
        assert one.registry.get_sample_value("ateams_llm_calls_total", {"model": "m", "tier": "fast", "role": "pm", "purpose": "plan", "outcome": "ok"}) is None
    finally:
        server.stop()
    with socket.socket() as busy:  # a port in use is a settings error that names the key
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = settings.model_copy(update={"metrics": MetricsSettings(port=busy.getsockname()[1])})
        service2 = await make_service(ScriptedModel(), cfg=cfg)
        with pytest.raises(SettingsError, match="metrics.port"):
            install_metrics(service2)
        assert service2.llm.observers == [] and not hasattr(service2, "metrics")  # nothing half-installed


# -- logs ------------------------------------------------------------------------------------------------
SECRET = "sk-test" + "A1b2C3d4E5f6G7h8I9j0K1l2"
MARKER = "Zanzibar-marmalade-protocol"


async def test_info_logs_carry_ids_and_hold_no_prompt_and_no_secret(make_service, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    probe = logging.getLogger("agency.test_probe")

    def work(req):  # noqa: ANN001, ANN202
        # code running inside a task: its log lines carry the ids; a careless line with the key is redacted
        probe.info("work turn for %s with key %s", req.meta["task"]["key"], SECRET)
        return None

    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        service = await make_service(ScriptedModel({"purpose:work": work}))
        info = await service.new_project(AGENCY, f"{OBJECTIVE} ({MARKER}, key {SECRET})", oversight="autonomous", actor=DIRECTOR)
        assert await drive(service, info.id) == "done"
        logging.getLogger("agency.engine").warning("a warning outside any project")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()
    text = stream.getvalue()
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]
    probes = [x for x in lines if x.get("logger") == "agency.test_probe"]
    assert len(probes) >= 3
    assert all(x["project_id"] == info.id and isinstance(x["task_id"], int) for x in probes)
    assert all(x["level"] == "info" and "timestamp" in x for x in probes)
    assert SECRET not in text and "[REDACTED]" in text
    assert MARKER not in text  # no prompt (nor the objective inside it) at INFO
    outside = [x for x in lines if x.get("event") == "a warning outside any project"]
    assert outside and "project_id" not in outside[0]
