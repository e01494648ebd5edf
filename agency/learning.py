"""The Learning & Performance Manager: specialists that get better.

After each project (and on ``/evaluate @Handle``) the :class:`LearningManager`
gathers every piece of feedback on a specialist (Collaborator reviews, revision
requests, escalations, the Director's ratings and reactions, people's
corrections in its thread), its tasks and its performance figures, and asks the
model for a structured :class:`~agency.schemas.Evaluation` against the
expectations of the specialist's definition. The lessons go to memory (kind
``lesson``, ``member`` = handle, ``role``), where the recall hook finds them
before the specialist's next turn. A proposed system message becomes a new
``SystemMessageRow`` (status ``proposed``) with its reason and a diff, applied
when the Director approves it (an approval of kind ``revision``), or at once
when ``learning.auto_apply`` is set. Versions are never deleted: approving
retires the previous one, and a rollback adds a new version with the old text.
"""
from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agency import commands as cmdlib
from agency.db import repos
from agency.db.repos import overview, post
from agency.db.session import Database
from agency.db.tables import (
    ApprovalRow,
    EvaluationRow,
    FeedbackRow,
    MemberRow,
    ProjectRow,
    SystemMessageRow,
    TaskRow,
)
from agency.errors import AgencyError, CommandError, NotFoundError
from agency.llm.client import CallContext, LLMClient
from agency.ports import Memory, MemoryEntry
from agency.recall import AGENCY_LESSON, render_record
from agency.roles import learning as role
from agency.roles.common import clip
from agency.schemas import AgentTurn, Evaluation
from agency.settings import Settings
from agency.states import APPROVAL, VERSION, ApprovalState, VersionState, transition

log = logging.getLogger(__name__)

__all__ = [
    "LEARNING_HANDLE",
    "EvaluationOutcome",
    "LearningManager",
    "VersionInfo",
    "reaction_rating",
    "system_message_diff",
]

LEARNING_HANDLE = role.HANDLE
RecordFn = Callable[[Any, int], Awaitable[dict[str, Any]]]
DIFF_CHARS = 1200  # shown in the chat message; the whole diff is attached when longer
_FEEDBACK_ROWS = 40
_TASK_ROWS = 10

_POSITIVE = {"👍", "✅", "⭐", "❤", "+1", "thumbsup", "white_check_mark", "star", "heart"}
_NEGATIVE = {"👎", "❌", "-1", "thumbsdown", "x"}


def reaction_rating(emoji: str) -> int | None:
    """A Director's reaction as a rating: 👍 ✅ ⭐ ❤️ -> 5, 👎 ❌ -> 1, anything else -> None."""
    e = (emoji or "").strip().strip(":").replace("\ufe0f", "")
    e = "".join(ch for ch in e if not 0x1F3FB <= ord(ch) <= 0x1F3FF)  # skin tones
    if e in _POSITIVE:
        return 5
    if e in _NEGATIVE:
        return 1
    return None


def system_message_diff(old: str, new: str, old_label: str, new_label: str) -> str:
    return "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label, lineterm=""))


@dataclass(frozen=True)
class EvaluationOutcome:
    handle: str
    evaluation: Evaluation
    evaluation_id: int
    lessons_stored: int
    proposed_version: int | None = None
    applied: bool = False
    approval_id: int | None = None


@dataclass(frozen=True)
class VersionInfo:
    version: int
    status: str
    reason: str
    text: str
    created_at: datetime | None


class LearningManager:
    """Evaluates specialists, stores lessons, proposes and applies system-message versions.

    ``record`` is :meth:`AgencyService.record` (performance figures of a member);
    ``notify(project_id or None)`` tells the outbox and the status board that
    something was posted.
    """

    def __init__(
        self,
        db: Database,
        llm: LLMClient,
        memory: Memory | None,
        settings: Settings,
        *,
        record: RecordFn,
        notify: Callable[[int | None], None] | None = None,
    ) -> None:
        self.db = db
        self.llm = llm
        self.memory = memory
        self.settings = settings
        self.record = record
        self.notify = notify or (lambda _pid: None)
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    def _lock(self, agency_id: int, handle: str) -> asyncio.Lock:
        return self._locks.setdefault((agency_id, handle.lower()), asyncio.Lock())

    async def ensure_member(self, s: AsyncSession, agency_id: int) -> MemberRow:
        """The Learning Manager is a member of every agency (handle ``Learning-Manager``, kind ``learning``)."""
        m = await repos.member_by_handle(s, agency_id, LEARNING_HANDLE)
        if m is None:
            try:
                async with s.begin_nested():
                    m = MemberRow(agency_id=agency_id, handle=LEARNING_HANDLE, kind="learning", role="learning",
                                  display_name="Learning & Performance Manager")
                    s.add(m)
            except IntegrityError:  # created meanwhile by a concurrent evaluation
                m = await repos.member_by_handle(s, agency_id, LEARNING_HANDLE)
                assert m is not None
        return m

    # -- after a project --------------------------------------------------------------------
    async def after_project(self, project_id: int) -> list[EvaluationOutcome]:
        """The ``on_project_done`` hook: evaluate every LLM specialist that worked on the project."""
        async with self.db.session() as s:
            p = await s.get(ProjectRow, project_id)
            if p is None or p.status != "done":
                return []
            agency_id = p.agency_id
            assignees = select(TaskRow.assignee_id).where(TaskRow.project_id == project_id)
            with_feedback = select(FeedbackRow.member_id).where(FeedbackRow.project_id == project_id)
            members = (await s.execute(
                select(MemberRow).where(MemberRow.kind == "specialist", or_(MemberRow.id.in_(assignees), MemberRow.id.in_(with_feedback)))
                .order_by(MemberRow.handle)
            )).scalars().all()
            done = set((await s.execute(
                select(EvaluationRow.member_id).where(EvaluationRow.project_id == project_id, EvaluationRow.trigger == "project")
            )).scalars())
            handles = [m.handle for m in members if m.id not in done]
        if not handles:
            return []
        async with self.db.session() as s:
            await self.ensure_member(s, agency_id)
            await s.commit()
        log.info("learning: evaluating %d specialist(s) (project=%s)", len(handles), project_id)
        results = await asyncio.gather(
            *(self.evaluate(agency_id, h, project_id, trigger="project") for h in handles), return_exceptions=True
        )
        outcomes: list[EvaluationOutcome] = []
        failed: list[str] = []
        for h, r in zip(handles, results):
            if isinstance(r, EvaluationOutcome):
                outcomes.append(r)
            elif isinstance(r, BaseException):
                if isinstance(r, AgencyError):
                    log.warning("learning: evaluation of %s failed (project=%s): %s", h, project_id, r.user_message)
                    failed.append(f"@{h}: {r.user_message}")
                else:
                    log.error("learning: evaluation of %s crashed (project=%s)", h, project_id, exc_info=r)
                    failed.append(f"@{h}: internal error ({type(r).__name__})")
        await self._post_summary(agency_id, project_id, outcomes, failed)
        return outcomes

    async def _post_summary(self, agency_id: int, project_id: int, outcomes: list[EvaluationOutcome], failed: list[str]) -> None:
        if not outcomes and not failed:
            return
        parts = [f"@{o.handle} {o.evaluation.mean_score if o.evaluation.mean_score is not None else '-'}/5" for o in outcomes]
        proposed = [o for o in outcomes if o.proposed_version and not o.applied]
        applied = [o for o in outcomes if o.applied]
        text = f"Project #{project_id}: evaluated {len(outcomes)} specialist(s): {', '.join(parts) or 'none'}."
        lessons = sum(o.lessons_stored for o in outcomes)
        if lessons:
            text += f" {lessons} lesson(s) stored in memory."
        if proposed:
            text += f" {len(proposed)} system-message revision(s) await your approval in the project's #overview."
        if applied:
            text += f" {len(applied)} revision(s) applied automatically."
        if failed:
            text += " Not evaluated: " + "; ".join(failed)
        async with self.db.session() as s:
            await self.ensure_member(s, agency_id)
            post(s, agency_id, project_id, "hq", LEARNING_HANDLE, text)
            await s.commit()
        self.notify(None)

    # -- evaluation -----------------------------------------------------------------------------
    async def evaluate(
        self,
        agency_id: int,
        handle: str,
        project_id: int | None = None,
        *,
        trigger: str = "director",
        address: str | None = None,
        require_revision: bool = False,
        request: str = "",
    ) -> EvaluationOutcome:
        """Evaluate one specialist (over one project, or its whole history); store lessons; propose a revision."""
        async with self._lock(agency_id, handle):
            return await self._evaluate(agency_id, handle, project_id, trigger, address, require_revision, request)

    async def _evaluate(self, agency_id: int, handle: str, project_id: int | None, trigger: str, address: str | None,
                        require_revision: bool, request: str) -> EvaluationOutcome:
        async with self.db.session() as s:
            m = await repos.member_by_handle(s, agency_id, handle)
            if m is None:
                raise NotFoundError(f"There is no member @{handle.lstrip('@')}. Try `/specialist list`.")
            if m.kind != "specialist":
                raise AgencyError(f"@{m.handle} is a {m.kind}; the Learning Manager evaluates LLM specialists.")
            lm = await self.ensure_member(s, agency_id)
            await s.commit()
            member_id, handle, member_role, definition = m.id, m.handle, m.role, m.definition
            sysmsg = await repos.active_system_message(s, member_id)
            record = await self.record(s, member_id)
            fq = (select(FeedbackRow, TaskRow.key).outerjoin(TaskRow, TaskRow.id == FeedbackRow.task_id)
                  .where(FeedbackRow.member_id == member_id))
            tq = select(TaskRow).where(TaskRow.assignee_id == member_id)
            p = await s.get(ProjectRow, project_id) if project_id else None
            if project_id:
                fq = fq.where(FeedbackRow.project_id == project_id)
                tq = tq.where(TaskRow.project_id == project_id)
            fb_rows = list((await s.execute(fq.order_by(FeedbackRow.id.desc()).limit(_FEEDBACK_ROWS))).all())[::-1]
            feedback = [
                {"source": f.source, "rating": f.rating, "task": key, "author": f.author, "text": clip(f.text, 600)}
                for f, key in fb_rows
            ]
            tasks = [
                {"project": t.project_id, "task": t.key, "title": t.title, "status": t.status,
                 "revisions": t.revision, "reassignments": t.attempt, "output": clip(t.output, 500)}
                for t in (await s.execute(tq.order_by(TaskRow.id.desc()).limit(_TASK_ROWS))).scalars()
            ][::-1]
            last_project = (await s.execute(
                select(TaskRow.project_id).where(TaskRow.assignee_id == member_id).order_by(TaskRow.project_id.desc()).limit(1)
            )).scalar()
            lm_id = lm.id
        known = await self._known_lessons(agency_id, handle, member_role, definition)
        scope = (f"project #{project_id}: {p.objective}" if p is not None else "all of its work so far (latest feedback first cut at "
                 f"{_FEEDBACK_ROWS} items)")
        current_text = sysmsg.text if sysmsg else ""
        current_version = sysmsg.version if sysmsg else None
        msgs = role.evaluate_messages(handle=handle, role=member_role, definition=definition, system_message=current_text,
                                      version=current_version, record=record, feedback=feedback, tasks=tasks,
                                      known_lessons=known, scope=scope, request=request, require_revision=require_revision)
        ctx = CallContext(
            role="learning", purpose="revise" if require_revision else "evaluate", agency_id=agency_id, project_id=project_id,
            member_id=lm_id, call_key=f"p{project_id}:evaluate:m{member_id}" if trigger == "project" and project_id else None,
            meta={"purpose": "evaluate", "handle": handle, "role": member_role,
                  "expectations": (definition or {}).get("expectations", []), "system_message": current_text,
                  "feedback": feedback, "tasks": tasks, "record": record, "known_lessons": known,
                  "require_revision": require_revision},
        )
        evaluation = await self.llm.call(Evaluation, msgs, ctx)
        stored = await self._store_lessons(agency_id, handle, member_role, evaluation.lessons)
        approval_project = project_id or last_project
        where = address or (overview(project_id) if project_id else "hq")
        async with self.db.session() as s:
            ev = EvaluationRow(agency_id=agency_id, member_id=member_id, project_id=project_id, trigger=trigger,
                               evaluation=evaluation.model_dump(), mean_score=evaluation.mean_score, record=record)
            s.add(ev)
            proposed: SystemMessageRow | None = None
            approval: ApprovalRow | None = None
            applied = False
            new_text = evaluation.revised_system_message.strip()
            if evaluation.propose_revision and new_text and new_text != current_text.strip():
                version = await repos.next_version(s, member_id)
                proposed = SystemMessageRow(member_id=member_id, version=version, text=new_text, status="proposed",
                                            reason=evaluation.reason.strip())
                s.add(proposed)
                await s.flush()
                await self._supersede_proposals(s, agency_id, member_id, handle, keep=version, why=f"superseded by v{version}")
                ev.proposed_version = version
                if self.settings.learning.auto_apply:
                    await self._activate(s, member_id, proposed)
                    applied = True
                elif approval_project is not None:
                    approval = ApprovalRow(project_id=approval_project, kind="revision", subject=f"{handle} v{version}",
                                           status="pending", options=[])
                    s.add(approval)
                    await s.flush()
            text, attachment = self._render(handle, member_role, evaluation, record, stored, scope, current_version, current_text,
                                            proposed, applied, approval, approval_project, where)
            post(s, agency_id, project_id, where, LEARNING_HANDLE, text, kind="approval" if approval else "chat",
                 approval_id=approval.id if approval else None, attachment=attachment,
                 mentions=["director"] if approval else None)
            if project_id:
                repos.event(s, project_id, "evaluated", member=handle, mean_score=evaluation.mean_score,
                            lessons=len(evaluation.lessons), proposed_version=proposed.version if proposed else None, applied=applied)
            await s.commit()
            outcome = EvaluationOutcome(handle=handle, evaluation=evaluation, evaluation_id=ev.id, lessons_stored=stored,
                                        proposed_version=proposed.version if proposed else None, applied=applied,
                                        approval_id=approval.id if approval else None)
        self.notify(project_id)
        log.info("learning: evaluated %s (project=%s, mean=%s, proposed=%s, applied=%s)", handle, project_id,
                 evaluation.mean_score, outcome.proposed_version, applied)
        return outcome

    def _render(self, handle: str, member_role: str, ev: Evaluation, record: dict[str, Any], stored: int, scope: str,
                current_version: int | None, current_text: str, proposed: SystemMessageRow | None, applied: bool,
                approval: ApprovalRow | None, approval_project: int | None, where: str) -> tuple[str, tuple[str, str] | None]:
        lines = [f"**Evaluation of @{handle}** ({member_role}) - {clip(scope, 200)}"]
        if ev.scores:
            lines.append(f"Scores (mean {ev.mean_score}/5):")
            lines += [f"- {clip(x.expectation, 120)}: {x.score}/5" + (f" - {clip(x.evidence, 200)}" if x.evidence else "") for x in ev.scores]
        if ev.strengths:
            lines.append("Strengths: " + "; ".join(clip(x, 200) for x in ev.strengths))
        if ev.weaknesses:
            lines.append("Weaknesses: " + "; ".join(clip(x, 200) for x in ev.weaknesses))
        if ev.lessons:
            lines.append("Lessons" + (" stored in memory:" if stored else " (memory is off, not stored):"))
            lines += [f"- {x}" for x in ev.lessons]
        lines.append(f"Record: {render_record(record)}")
        attachment: tuple[str, str] | None = None
        if proposed is not None:
            diff = system_message_diff(current_text, proposed.text, f"v{current_version or 0}", f"v{proposed.version}")
            shown = diff if len(diff) <= DIFF_CHARS else diff[:DIFF_CHARS] + "\n... (full diff attached)"
            if len(diff) > DIFF_CHARS:
                attachment = (f"{handle}-v{proposed.version}.diff", diff + "\n")
            head = "Applied" if applied else "Proposed"
            lines.append(f"{head} system message v{proposed.version} (was v{current_version or 0}): {clip(proposed.reason, 600)}")
            lines.append(f"```diff\n{shown}\n```")
            if applied:
                lines.append(f"Applied automatically (learning.auto_apply). `/specialist rollback {handle} {current_version}` restores the previous one."
                             if current_version else "Applied automatically (learning.auto_apply).")
            elif approval is not None:
                here = where == overview(approval_project) if approval_project else False
                lines.append("`/approve` to apply it, or `/reject <why>`" + ("." if here else f" in project #{approval_project}'s #overview (or use the buttons)."))
            else:
                lines.append(f"No project to attach an approval to: `/specialist rollback {handle} {proposed.version}` applies it.")
        elif ev.propose_revision:
            lines.append("The proposed system message is the same as the current one; nothing to change.")
        return "\n".join(lines), attachment

    async def _known_lessons(self, agency_id: int, handle: str, member_role: str, definition: dict[str, Any] | None) -> list[str]:
        if self.memory is None:
            return []
        query = " ".join([member_role, *((definition or {}).get("expertise", [])[:5])])
        try:
            hits = await self.memory.search(agency_id, query, kinds=["lesson"], where={"member": handle}, limit=8)
        except Exception:
            log.exception("learning: could not read the lessons of %s", handle)
            return []
        return [h.text for h in hits]

    async def _store_lessons(self, agency_id: int, handle: str, member_role: str, lessons: list[str]) -> int:
        if self.memory is None or not lessons:
            return 0
        entries = [MemoryEntry(text=x, kind="lesson", agency_id=agency_id, member=handle, role=member_role, source="evaluation")
                   for x in lessons if x.strip()]
        try:
            await self.memory.add(entries)
        except Exception:
            log.exception("learning: could not store the lessons of %s", handle)
            return 0
        return len(entries)

    async def add_lesson(self, agency_id: int, text: str, *, handle: str | None = None, member_role: str | None = None) -> str:
        """Store a lesson: for one member, one role, or (neither) for every member."""
        text = " ".join(text.split())
        if not text:
            raise CommandError("Write the lesson after the command: `/lesson <text>`.")
        if self.memory is None:
            raise AgencyError("Memory is off (memory.enabled = false), so lessons cannot be stored.")
        source = "lesson" if handle or member_role else AGENCY_LESSON
        await self.memory.add([MemoryEntry(text=clip(text, 600), kind="lesson", agency_id=agency_id, member=handle,
                                           role=member_role, source=source)])
        who = f"@{handle}" if handle else (f"every {member_role}" if member_role else "every member")
        return f"Lesson stored for {who}."

    # -- versions ---------------------------------------------------------------------------------
    @staticmethod
    async def _activate(s: AsyncSession, member_id: int, row: SystemMessageRow) -> None:
        await transition(s, VERSION, None, VersionState.RETIRED, where=[SystemMessageRow.member_id == member_id, SystemMessageRow.id != row.id])
        if not await transition(s, VERSION, row.id, VersionState.ACTIVE):
            raise AgencyError(f"v{row.version} is {row.status}; only a proposed version can become active.")

    @staticmethod
    async def _supersede_proposals(s: AsyncSession, agency_id: int, member_id: int, handle: str, *, keep: int | None, why: str) -> None:
        old = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == member_id,
                                                              SystemMessageRow.status == "proposed"))).scalars().all()
        projects = select(ProjectRow.id).where(ProjectRow.agency_id == agency_id)
        for r in old:
            if r.version == keep:
                continue
            await transition(s, VERSION, r.id, VersionState.REJECTED, frm=(VersionState.PROPOSED,), values={"reason": f"{r.reason}\n({why})".strip()})
            await transition(s, APPROVAL, None, ApprovalState.SUPERSEDED, where=[ApprovalRow.kind == "revision", ApprovalRow.project_id.in_(projects),
                                                                                ApprovalRow.subject == f"{handle} v{r.version}"], values={"reason": why})

    async def decide_revision(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None,
                              choice: int | None) -> str:
        """The engine's ``extra_decisions["revision"]``: runs inside the Director's decision transaction."""
        handle, _, v = a.subject.rpartition(" v")
        m = await repos.member_by_handle(s, p.agency_id, handle)
        if m is None or not v.isdigit():
            raise NotFoundError(f"The revision {a.subject!r} refers to no member.")
        row = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == m.id,
                                                              SystemMessageRow.version == int(v)))).scalar_one_or_none()
        if row is None or row.status != "proposed":
            return f"v{v} of @{m.handle} is {row.status if row else 'gone'}; nothing to apply."
        where = overview(p.id)
        if approved:
            await self._activate(s, m.id, row)
            post(s, p.agency_id, p.id, where, LEARNING_HANDLE,
                 f"@{m.handle} now works from system message v{row.version} (approved by the Director). "
                 f"`/specialist history {m.handle}` lists every version; `/specialist rollback {m.handle} <version>` restores one.")
            return f"System message v{row.version} of @{m.handle} is now active."
        await transition(s, VERSION, row.id, VersionState.REJECTED, frm=(VersionState.PROPOSED,),
                         values={"reason": f"{row.reason}\nRejected by the Director: {reason}".strip()})
        post(s, p.agency_id, p.id, where, LEARNING_HANDLE, f"Revision v{row.version} of @{m.handle} rejected: {reason}. The current version stays.")
        return f"Revision v{row.version} of @{m.handle} rejected."

    async def history(self, agency_id: int, handle: str) -> tuple[str, list[VersionInfo]]:
        async with self.db.session() as s:
            m = await repos.member_by_handle(s, agency_id, handle)
            if m is None:
                raise NotFoundError(f"There is no member @{handle.lstrip('@')}. Try `/specialist list`.")
            rows = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == m.id)
                                    .order_by(SystemMessageRow.version))).scalars().all()
            return m.handle, [VersionInfo(r.version, r.status, r.reason, r.text, r.created_at) for r in rows]

    @staticmethod
    def render_history(handle: str, versions: list[VersionInfo]) -> str:
        if not versions:
            return f"@{handle} has no system-message versions (it is not an LLM specialist)."
        lines = [f"System-message versions of @{handle}:"]
        for v in versions:
            when = v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "?"
            reason = " ".join(v.reason.split())
            lines.append(f"- v{v.version} ({v.status}, {when}): {clip(reason, 200) or 'no reason given'}")
        lines.append(f"`/specialist rollback {handle} <version>` restores one.")
        return "\n".join(lines)

    async def rollback(self, agency_id: int, handle: str, version: int, actor: str) -> str:
        """Make version ``version``'s text active again, as a new version (every version is kept)."""
        async with self._lock(agency_id, handle):
            async with self.db.session() as s:
                m = await repos.member_by_handle(s, agency_id, handle)
                if m is None:
                    raise NotFoundError(f"There is no member @{handle.lstrip('@')}. Try `/specialist list`.")
                target = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == m.id,
                                                                         SystemMessageRow.version == version))).scalar_one_or_none()
                if target is None:
                    raise NotFoundError(f"@{m.handle} has no version {version}. `/specialist history {m.handle}` lists them.")
                active = await repos.active_system_message(s, m.id)
                if active is not None and active.version == version:
                    return f"v{version} is already @{m.handle}'s active system message."
                new = SystemMessageRow(member_id=m.id, version=await repos.next_version(s, m.id), text=target.text,
                                       status="proposed", reason=f"rollback to v{version} by {actor}")
                s.add(new)
                await s.flush()
                await self._activate(s, m.id, new)
                await self._supersede_proposals(s, agency_id, m.id, m.handle, keep=None, why=f"superseded by the rollback to v{version}")
                await self.ensure_member(s, agency_id)
                post(s, agency_id, None, "hq", LEARNING_HANDLE,
                     f"@{m.handle}'s system message is v{new.version} again with the text of v{version} (rollback by {actor}).")
                await s.commit()
                result = f"@{m.handle} restored: v{new.version} (the text of v{version}) is now active."
        self.notify(None)
        log.info("learning: %s rolled back to v%s as v%s", handle, version, new.version)
        return result

    async def latest_evaluation(self, agency_id: int, handle: str) -> EvaluationRow | None:
        async with self.db.session() as s:
            m = await repos.member_by_handle(s, agency_id, handle)
            if m is None:
                return None
            return (await s.execute(select(EvaluationRow).where(EvaluationRow.member_id == m.id)
                                    .order_by(EvaluationRow.id.desc()).limit(1))).scalar_one_or_none()

    # -- the Learning Manager as an agent ----------------------------------------------------------------
    async def execute(self, agency_id: int, commands: list[str], *, project_id: int | None, address: str | None,
                      request: str = "") -> list[str]:
        """Run the commands of a Learning Manager turn (``/evaluate``, ``/revise``, ``/lesson``); returns what each did."""
        results: list[str] = []
        for raw in commands[:5]:
            try:
                c = cmdlib.parse(raw)
                cmdlib.authorize(c, "learning", is_model=True)
                if c.name in ("evaluate", "revise"):
                    o = await self.evaluate(agency_id, c.args["handle"], project_id, trigger="learning", address=address,
                                            require_revision=c.name == "revise", request=request)
                    results.append(f"/{c.name} @{o.handle}: mean {o.evaluation.mean_score}/5"
                                   + (f", proposed v{o.proposed_version}" if o.proposed_version else ""))
                elif c.name == "lesson":
                    results.append(await self.add_lesson(agency_id, c.args["text"]))
                else:
                    results.append(f"/{c.name} is not available to the Learning Manager")
            except AgencyError as e:
                results.append(f"{raw[:80]!r} refused: {e.user_message}")
        return results

    async def converse(self, agency_id: int, text: str, author: str, *, project_id: int | None = None, address: str = "hq") -> str:
        """Someone spoke to the Learning Manager: it answers and may evaluate, revise or store a lesson."""
        async with self.db.session() as s:
            lm = await self.ensure_member(s, agency_id)
            await s.commit()
            specialists = []
            for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == agency_id, MemberRow.kind == "specialist")
                                      .order_by(MemberRow.handle).limit(30))).scalars():
                specialists.append({"handle": m.handle, "role": m.role, "record": render_record(await self.record(s, m.id))})
            p = await s.get(ProjectRow, project_id) if project_id else None
            lm_id = lm.id
        scope = f"project #{project_id}: {p.objective}" if p is not None else "the whole agency"
        ctx = CallContext(role="learning", purpose="answer", agency_id=agency_id, project_id=project_id, member_id=lm_id,
                          meta={"purpose": "answer", "text": text, "specialists": specialists})
        turn = await self.llm.call(AgentTurn, role.turn_messages(request=text, author=author, specialists=specialists, scope=scope), ctx)
        async with self.db.session() as s:
            post(s, agency_id, project_id, address, LEARNING_HANDLE, turn.message or "Noted.")
            await s.commit()
        self.notify(project_id)
        results = await self.execute(agency_id, turn.commands, project_id=project_id, address=address, request=text)
        return "\n".join([turn.message or "Noted.", *results])
