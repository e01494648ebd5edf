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
from agency.db.records import member_record, member_records
from agency.db.session import Database
from agency.engine import Engine
from agency.engine.base import Changes, RunFlags
from agency.engine.budget import BudgetGate
from agency.learning import LearningManager
from agency.llm.client import LLMClient, ModelSet
from agency.memory import memory_from_settings
from agency.models import Actor
from agency.ports import ChatPort
from agency.recall import make_recall, store_project_work
from agency.service import AgencyService, CommandResult, build_model_set, build_tools
from agency.settings import Settings
from specialists.loader import Catalogue, load_catalogue

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


async def build_service(settings: Settings, chat: ChatPort | None, *, models: ModelSet | None = None, memory: Any = None,
                        upgrade: bool = True, extras: bool = True) -> AgencyService:
    """The service with every part the settings enable (``extras=False``: the core only: no recall,
    learning, text commands or metrics; what ``AgencyService.create`` builds for tests).

    ``memory``: pass one to share it (the caller closes it); by default it is built from the settings
    (when ``extras``) and closed with the service.
    """
    db = Database.from_settings(settings)
    if upgrade:
        await db.upgrade()
    if memory is None and extras and settings.memory.enabled:
        memory = memory_from_settings(settings, namespace=await memory_namespace(settings, db))
        service = compose(settings, db, chat, models=models or build_model_set(settings), memory=memory, extras=extras)
        service.on_close(memory.close)  # built here, closed with the service
        return service
    return compose(settings, db, chat, models=models or build_model_set(settings), memory=memory, extras=extras)


async def memory_namespace(settings: Settings, db: Database) -> str:
    """The prefix of this deployment's collections: ``memory.namespace``, or with a Chroma server that
    several deployments may share, this database's deployment id; none for a local store of its own."""
    if settings.memory.namespace or not settings.memory.server_url:
        return settings.memory.namespace
    from agency.db.repos import deployment_id

    async with db.session() as s:
        return "d" + (await deployment_id(s)).replace("-", "")[:12]


def compose(settings: Settings, db: Database, chat: ChatPort | None, *, models: ModelSet, memory: Any = None, extras: bool = True,
            llm_class: type[LLMClient] = LLMClient, catalogue: Catalogue | None = None) -> AgencyService:
    """Build every part once, each constructor given what it needs (the one composition root)."""
    own_memory = memory is None and extras and settings.memory.enabled
    if own_memory:
        memory = memory_from_settings(settings)  # (build_service passes one with the deployment's namespace)
    changes, flags = Changes(), RunFlags()
    llm = llm_class(db, models, settings, budget_check=BudgetGate(db, settings, flags, changes))
    catalogue = catalogue or load_catalogue()
    hooks: list[Any] = []
    decisions: dict[str, Any] = {}
    learning: LearningManager | None = None
    recall = make_recall(memory, settings, db=db, records=member_records) if extras else None
    if extras and memory is not None:
        async def store_work(project_id: int) -> None:
            await store_project_work(memory, db, project_id)

        hooks.append(store_work)
    if extras and settings.learning.enabled:
        learning = LearningManager(db, llm, memory, settings, record=member_record, notify=changes.changed)
        decisions["revision"] = learning.decide_revision
        hooks.append(learning.after_project)
    engine = Engine(db, llm, settings, catalogue, changes=changes, flags=flags, recall=recall, tools=build_tools(settings, memory, db),
                    on_project_done=hooks, extra_decisions=decisions)
    service = AgencyService(settings, db, llm, chat, engine=engine, catalogue=catalogue, memory=memory, learning=learning,
                            extra_commands=COMMANDS if extras else None)
    if own_memory:
        service.on_close(memory.close)
    if extras:
        from agency.metrics import install_metrics  # observability: a Prometheus endpoint when [metrics] port is set

        install_metrics(service)  # sets service.metrics; stops with service.close()
        log.info("service built: memory %s, learning %s", "on" if memory is not None else "off",
                 "on" if settings.learning.enabled else "off")
    return service


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
