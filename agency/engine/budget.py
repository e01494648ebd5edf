"""The budget gate: runs before every model call of a project. A halted
project (stopping, paused, cancelled, blocked) makes no more calls; a spent
budget pauses the project (``BudgetExceededError``), and crossing the warning
ratio tells the Director once."""
from __future__ import annotations

from sqlalchemy import bindparam, update

from agency.db import repos
from agency.db.repos import SYSTEM, overview, post
from agency.db.session import Database
from agency.db.tables import ProjectRow
from agency.engine.base import PROJECT_GATE, Changes, ProjectPaused, RunFlags
from agency.errors import BudgetExceededError
from agency.llm.client import CallContext
from agency.llm.usage import format_usd
from agency.settings import Settings
from agency.states import ProjectState

_HALTED = (ProjectState.PAUSED, ProjectState.CANCELLED, ProjectState.BLOCKED)
_WARNED_ONCE = (update(ProjectRow).where(ProjectRow.id == bindparam("pid"), ProjectRow.budget_warned == 0)
                .values(budget_warned=1).execution_options(synchronize_session=False))


class BudgetGate:
    def __init__(self, db: Database, settings: Settings, flags: RunFlags, changes: Changes) -> None:
        self.db = db
        self.settings = settings
        self.flags = flags
        self.changes = changes

    async def __call__(self, ctx: CallContext) -> None:
        if ctx.project_id is None:
            return
        if self.flags.halted(ctx.project_id):
            raise ProjectPaused()
        async with self.db.engine.connect() as conn:  # the common case in one prebuilt read, no ORM session
            gate = (await conn.execute(PROJECT_GATE, {"pid": ctx.project_id})).one_or_none()
        if gate is None:
            return
        status, budget_usd, budget_tokens = gate
        if status in _HALTED and ctx.purpose not in ("evaluate", "revise"):
            raise ProjectPaused()
        if budget_usd is None and budget_tokens is None:
            return
        async with self.db.session() as s:  # a budget: load the project, whose warning flag this may set
            p = await s.get(ProjectRow, ctx.project_id)
            if p is None:
                return
            tokens, cost, _ = await repos.project_usage(s, p.id)
            spent = cost / p.budget_usd if p.budget_usd else tokens / p.budget_tokens  # type: ignore[operator]
            if spent >= 1.0:
                raise BudgetExceededError(
                    f"Project #{p.id} has spent {spend_text(p, tokens, cost)}; raise the budget with `/budget <usd>` or stop."
                )
            if spent >= self.settings.engine.budget_warn_ratio and not p.budget_warned:
                if (await s.execute(_WARNED_ONCE, {"pid": p.id})).rowcount:  # type: ignore[attr-defined]  # once, even when two calls cross together
                    post(s, p.agency_id, p.id, overview(p.id), SYSTEM,
                         f"Budget warning: project #{p.id} has used {spent:.0%} ({spend_text(p, tokens, cost)}).",
                         kind="notice", mentions=["director"])
                    repos.event(s, p.id, "budget_warning", ratio=spent)
                await s.commit()
                self.changes.changed(p.id)


def spend_text(p: ProjectRow, tokens: int, cost: float) -> str:
    if p.budget_usd:
        return f"{format_usd(cost)} of {format_usd(p.budget_usd)}"
    return f"{tokens} of {p.budget_tokens} tokens"
