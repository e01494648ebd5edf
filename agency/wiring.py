"""Compose the service from settings: database, models, memory, learning, metrics.

Adapters (the terminal, the Discord bot, tests) call :func:`build_service`;
each optional part plugs in here without the core knowing about it:

- memory (``[memory]``): Chroma under ``data_dir/chroma`` (or a Chroma server)
  with the local embedding model, unless ``memory.enabled = false``;
- recall: before each PM and specialist turn, the relevant lessons, knowledge
  and earlier work (:mod:`agency.recall`); after delivery, the project's work is
  stored in memory;
- the Learning & Performance Manager (``[learning]``): evaluations after each
  project and on ``/evaluate``, lessons, system-message versions
  (:mod:`agency.learning`), approved through the normal approval flow;
- text commands: ``/evaluate``, ``/specialist show|history|rollback``,
  ``/resource add``, ``/memory search``.
"""
from __future__ import annotations

import logging
from typing import Any

from agency.commands import Command
from agency.learning import LearningManager
from agency.llm.client import ModelSet
from agency.memory import memory_from_settings
from agency.models import Actor
from agency.ports import ChatPort
from agency.recall import make_recall, store_project_work
from agency.service import AgencyService, CommandResult
from agency.settings import Settings

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Call once start-up is done (the terminal, the bot, the benchmarks): freeze what start-up
    allocated and collect less often. Full collections were the event loop's longest pauses; a young
    generation of 10,000 objects keeps each young collection near 10 ms (50,000 gave pauses of 65 ms
    at 100 projects in ``bench/``)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


async def build_service(settings: Settings, chat: ChatPort | None, *, models: ModelSet | None = None, memory: Any = None) -> AgencyService:
    """The service with every optional part the settings enable.

    ``memory``: pass one to share it (the caller closes it); by default it is
    built from the settings and closed with the service.
    """
    own_memory = memory is None and settings.memory.enabled
    if own_memory:
        memory = memory_from_settings(settings)
    service = await AgencyService.create(settings, chat, models=models, memory=memory)
    engine = service.engine
    engine.recall = make_recall(memory, settings, db=service.db, records=service.records)
    if memory is not None:
        async def store_work(project_id: int) -> None:
            await store_project_work(memory, service.db, project_id)

        engine.on_project_done.append(store_work)
    if settings.learning.enabled:
        def notify(project_id: int | None) -> None:
            if project_id is not None:
                engine._changed(project_id)  # outbox and live status
            else:
                engine.outbox_ready.set()

        lm = LearningManager(service.db, service.llm, memory, settings, record=service.record, notify=notify)
        service.learning = lm
        engine.extra_decisions["revision"] = lm.decide_revision
        engine.on_project_done.append(lm.after_project)
    service.extra_commands.update(COMMANDS)
    if own_memory:
        _close_memory_with(service, memory)
    # -- metrics (agency.metrics; observability): Prometheus endpoint when [metrics] port is set, else nothing --
    from agency.metrics import install_metrics

    install_metrics(service)  # sets service.metrics; stops with service.close()
    # -- end metrics --
    log.info("service built: memory %s, learning %s", "on" if memory is not None else "off",
             "on" if settings.learning.enabled else "off")
    return service


def _close_memory_with(service: AgencyService, memory: Any) -> None:
    close = service.close

    async def close_all() -> None:
        try:
            await close()
        finally:
            await memory.close()

    service.close = close_all  # type: ignore[method-assign]


# -- text commands (service.extra_commands) ---------------------------------------------------------
async def _evaluate(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    text = await service.evaluate_specialist(agency, cmd.args["handle"], actor, address=address)
    return CommandResult(text, ephemeral=False)


async def _show(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    m = await service.member(agency, cmd.args["handle"])
    text = service.render_member(m)
    d = m.definition or {}
    extra = [f"Collaboration: {d['collaboration_strategy']}" if d.get("collaboration_strategy") else "",
             f"Adaptability: {d['adaptability_strategy']}" if d.get("adaptability_strategy") else "",
             "Custom commands: " + ", ".join(f"/{c['name']} ({c['description']})" for c in d["custom_commands"]) if d.get("custom_commands") else ""]
    if any(extra):
        head, sep, rest = text.partition("\nSystem message v")  # the definition before the system message
        text = head + "".join(f"\n{x}" for x in extra if x) + (sep + rest if sep else "")
    if service.learning is not None and m.kind == "specialist":
        ev = await service.learning.latest_evaluation(await service._agency_id(agency), m.handle)
        if ev is not None:
            e = ev.evaluation
            where = f"project #{ev.project_id}" if ev.project_id else "all work"
            text += f"\nLatest evaluation ({where}): mean {ev.mean_score}/5"
            if e.get("lessons"):
                text += "; lessons: " + " | ".join(e["lessons"][:3])
    return CommandResult(text)


async def _history(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    return CommandResult(await service.specialist_history(agency, cmd.args["handle"]))


async def _rollback(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    return CommandResult(await service.rollback_specialist(agency, cmd.args["handle"], int(cmd.args["version"]), actor), ephemeral=False)


async def _resource_add(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    return CommandResult(await service.add_resource(agency, cmd.args["text"], f"added by {actor.name}", actor))


async def _memory_search(service: AgencyService, agency: str, address: str, actor: Actor, cmd: Command) -> CommandResult:
    return CommandResult(await service.search_memory(agency, cmd.args["query"]))


COMMANDS = {
    "evaluate": _evaluate,
    "specialist show": _show,
    "specialist history": _history,
    "specialist rollback": _rollback,
    "resource add": _resource_add,
    "memory search": _memory_search,
}
