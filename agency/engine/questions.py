"""Answers to ``/ask``: each pending question of a task is answered in a step
of its own (one model call of the addressee, then one transaction that posts
the answer and hands it to the asker's next turn). A question ignored once gets
a reminder (another step); ignored twice, the asker continues without it and
the PM is told.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import SYSTEM, overview, post, stream_addr, thread_addr
from agency.db.tables import FeedbackRow, MemberRow, StreamMemberRow, StreamRow, TaskRow
from agency.engine.base import HISTORY_ITEMS, PM_HANDLE, Core
from agency.errors import LLMOutputError
from agency.llm.client import CallContext
from agency.roles import specialist as spec_role
from agency.schemas import AgentTurn
from agency.states import TASK, TaskState, transition


async def member_address(s: AsyncSession, pid: int, m: MemberRow, fallback_stream: int) -> str:
    """Where a member reads what is addressed to it in this project."""
    if m.kind == "pm":
        return overview(pid)
    if m.kind == "collaborator":
        st = (await s.execute(select(StreamRow).where(StreamRow.project_id == pid, StreamRow.collaborator_id == m.id))).scalars().first()
        return stream_addr(st.id if st else fallback_stream)
    sm = (await s.execute(select(StreamMemberRow).join(StreamRow, StreamRow.id == StreamMemberRow.stream_id)
                          .where(StreamRow.project_id == pid, StreamMemberRow.member_id == m.id))).scalars().first()
    if sm is None:
        return stream_addr(fallback_stream)
    return stream_addr(sm.stream_id) if m.kind == "human" else thread_addr(sm.stream_id, m.id)


class Questions:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def answer(self, pid: int, tid: int) -> None:
        core = self.core
        async with core.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p = f.task, f.project
            seq = t.seq
            if not t.asks:
                return
            ask: dict[str, Any] = dict(t.asks[0])
            target = await s.get(MemberRow, ask["to_id"])
            sysmsg = await repos.active_system_message(s, target.id) if target else None
            identity = sysmsg.text if sysmsg else f"You are {ask['to']}, the {target.kind if target else 'member'} of this project."
            msgs = spec_role.answer_messages(identity, asker=ask["asker"], question=ask["question"], context=p.objective)
            if ask.get("reminded"):
                msgs = [*msgs, {"role": "user", "content": f"Reminder: @{ask['asker']} is waiting for your answer. Answer in `message` now."}]
            ctx = CallContext(role=target.kind if target and target.kind != "human" else "specialist", purpose="answer",
                              agency_id=p.agency_id, project_id=pid, task_id=tid, member_id=ask["to_id"],
                              call_key=ask["key"] + (":remind" if ask.get("reminded") else ""),
                              meta={"purpose": "answer", "question": ask["question"], "objective": p.objective})
        message = ""
        if target is not None:
            try:
                message = (await core.llm.call(AgentTurn, msgs, ctx)).message.strip()
            except LLMOutputError:
                message = ""  # an unusable answer counts as no answer
        async with core.db.session() as s:
            cur = await s.get(TaskRow, tid)
            assert cur is not None
            rest = list(cur.asks[1:])
            guard = [TaskRow.seq == seq]
            if not message and not ask.get("reminded"):  # ignored once: remind in the next step
                await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.RUNNING,), where=guard,
                                 values={"asks": [{**ask, "reminded": True}, *rest]})
                await s.commit()
                return
            item = ({"from": ask["to"], "text": message} if message
                    else {"from": SYSTEM, "text": f"@{ask['to']} did not answer; continue with what you have or ask someone else."})
            context = [*(cur.context or []), item][-HISTORY_ITEMS:]
            if not await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.RUNNING,), where=guard,
                                    values={"asks": rest, "context": context}):
                await s.rollback()
                return
            agency_id = (await repos.task_frame(s, tid)).project.agency_id
            if message:
                post(s, agency_id, pid, ask["where"], ask["to"], f"@{ask['asker']} {message}")
                repos.event(s, pid, "answered", task_id=tid, asker=ask["asker"], to=ask["to"])
            else:
                s.add(FeedbackRow(agency_id=agency_id, project_id=pid, member_id=ask["to_id"], task_id=tid, source="escalation",
                                  text=f"ignored a question from @{ask['asker']}"))
                post(s, agency_id, pid, overview(pid), SYSTEM, f"@{ask['to']} did not answer @{ask['asker']}'s question after a reminder; "
                     f"@{PM_HANDLE} is told and @{ask['asker']} continues without it.", kind="notice")
                repos.event(s, pid, "question_ignored", task_id=tid, asker=ask["asker"], to=ask["to"])
            await core.commit(s, pid)
