"""The Collaborator's review of a submission: one model call, then one
transaction: accept (``review -> done``, or ``approval`` when the Director
approves every task), revise (``review -> running`` with notes), or, past the
revision limit or when the review itself cannot be used, escalate to the PM
(``review -> escalated``). Applied only at the ``seq`` the review read.
"""
from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import overview, post, stream_addr, thread_addr
from agency.db.tables import ApprovalRow, FeedbackRow, TaskRow
from agency.engine.base import Core
from agency.engine.tasks import complete, escalate
from agency.errors import LLMOutputError
from agency.guided import review_schema
from agency.llm.client import CallContext
from agency.llm.router import next_tier
from agency.roles import collaborator as collab_role
from agency.schemas import Review
from agency.states import TASK, ApprovalState, TaskState, transition


class Reviews:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def review(self, pid: int, tid: int) -> None:
        core = self.core
        cfg = core.settings.engine
        async with core.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p, st, collab = f.task, f.project, f.stream, f.collaborator
            seq = t.seq
            chandle = collab.handle if collab else "Collaborator"
            task_view = core.task_view(t)
            schema = review_schema(t.key, len(t.success_criteria or []))
            msgs = collab_role.review_messages(chandle, st.key, st.goal, task_view, t.output or "", t.revision, cfg.max_revisions, schema)
            ctx = CallContext(role="collaborator", purpose="review", agency_id=p.agency_id, project_id=pid, task_id=tid,
                              member_id=collab.id if collab else None, stream_id=st.id,
                              call_key=f"t{tid}:a{t.attempt}:r{t.revision}:review",
                              meta={"purpose": "review", "task": task_view, "output": t.output, "revision": t.revision})
        try:
            review = await core.llm.call(Review, msgs, ctx, json_schema=schema)
        except LLMOutputError as e:  # an unusable review stops this task, not the project: the PM decides
            async with core.db.session() as s:
                f = await repos.task_frame(s, tid)
                await escalate(s, f.project, f.task, f"the review of {f.task.key} by @{chandle} could not be used: {e.errors[:300]}",
                               frm=(TaskState.REVIEW,), seq=seq)
                await core.commit(s, pid)
            return
        async with core.db.session() as s:
            f = await repos.task_frame(s, tid)  # also puts the stream and its Collaborator in the session
            if await self._apply(s, f, review, chandle, seq):
                await core.commit(s, pid)
            else:
                await s.rollback()

    async def _apply(self, s: AsyncSession, f: repos.TaskFrame, review: Review, chandle: str, seq: int) -> bool:
        core = self.core
        cfg = core.settings.engine
        t, p, assignee = f.task, f.project, f.assignee
        pid, tid = p.id, t.id
        guard = [TaskRow.seq == seq]
        # one mark per criterion, in order; a criterion the review did not mark is not verified
        marks = [*review.criteria_met, *[False] * max(len(t.success_criteria) - len(review.criteria_met), 0)]
        met = sum(1 for x in marks[: len(t.success_criteria)] if x)
        unmet = [c for c, ok in zip(t.success_criteria, marks) if not ok]
        inconsistent = review.decision == "accept" and bool(unmet)
        if inconsistent:  # an accept that contradicts its own check is no verification
            review = review.model_copy(update={"decision": "revise", "notes": "Not met: " + "; ".join(unmet) + (f". {review.notes}" if review.notes else "")})
        if review.decision == "accept":
            post(s, p.agency_id, pid, stream_addr(t.stream_id), chandle, f"{review.message or f'Accepted {t.key}.'} ({met}/{len(t.success_criteria)} criteria met)")
            if p.oversight == "every_task":
                if not await transition(s, TASK, tid, TaskState.APPROVAL, frm=(TaskState.REVIEW,), where=guard):
                    return False
                appr = ApprovalRow(project_id=pid, kind="task", subject=t.key, status=ApprovalState.PENDING)
                s.add(appr)
                await s.flush()
                post(s, p.agency_id, pid, overview(pid), chandle,
                     f"{t.key} '{t.title}' passed review. Output:\n\n{(t.output or '')[:1500]}\n\n`/approve` or `/reject <what to change>`.",
                     kind="approval", approval_id=appr.id, mentions=["director"])
            elif not await complete(s, p, t, frm=(TaskState.REVIEW,), seq=seq):
                return False  # the caller rolls back the post above with the rest
            repos.event(s, pid, "accepted", task_id=tid, key=t.key, revision=t.revision)
        else:
            revision = t.revision + 1
            if revision > cfg.max_revisions:
                reason = f"{t.key} still fails review after {cfg.max_revisions} revisions: {review.notes}"
                if not await escalate(s, p, t, reason, frm=(TaskState.REVIEW,), seq=seq, values={"revision": revision}):
                    return False
            else:
                values = {"revision": revision, "step": 0, "review_notes": review.notes, "context": []}
                up = next_tier(t.tier, list(core.settings.llm.tiers)) if revision >= core.settings.routing.escalate_after_revisions else None
                frm_tier = t.tier
                if up and up != t.tier:
                    values["tier"] = up
                if not await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.REVIEW,), where=guard, values=values):
                    return False
                if "tier" in values:
                    repos.event(s, pid, "tier_escalated", task_id=tid, frm=frm_tier, to=up)
            s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=assignee.id, task_id=tid, source="revision",
                              rating=None, text=review.notes, author=chandle))
            post(s, p.agency_id, pid, thread_addr(t.stream_id, assignee.id) if assignee.kind != "human" else stream_addr(t.stream_id),
                 chandle, f"@{assignee.handle} please revise {t.key}: {review.notes}",
                 mentions=[assignee.external_user_id] if assignee.external_user_id else [])
            repos.event(s, pid, "revise", task_id=tid, key=t.key, revision=revision)
        if inconsistent:
            repos.event(s, pid, "verification_inconsistent", task_id=tid, unmet=unmet)
        s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=assignee.id, task_id=tid, source="review",
                          rating=5 if review.decision == "accept" else 2, text=review.notes or review.message, author=chandle))
        return True
