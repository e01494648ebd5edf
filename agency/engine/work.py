"""A specialist's turn: one model call, then one transaction that applies it.

The turn's commands are validated intents. ``/submit`` moves the task to
review (the work product from the turn's ``output``, else the command's text,
else the message), unless :func:`agency.checks.submission_problem` finds it is
no work yet (a plan to work, a restatement of the task, too short, or off the
task's subject): then it goes back to the specialist with the reason, a turn
used and no review call spent. ``/blocked`` escalates it, ``/ask`` posts the
question and leaves it pending on the task (the addressee answers in a step of
its own, see :mod:`agency.engine.questions`); anything else becomes feedback
for the next turn. The whole turn applies only if the task is still at the ``seq`` the turn
read: a turn that another runner applied first is dropped, never applied twice.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from agency import commands as cmdlib
from agency.checks import submission_problem
from agency.db import repos
from agency.db.repos import SYSTEM, post, thread_addr
from agency.db.tables import TaskRow
from agency.engine.base import DEP_OUTPUTS, HISTORY_ITEMS, OTHER_OUTPUTS, Core, norm
from agency.engine.questions import member_address
from agency.engine.tasks import escalate, project_handles
from agency.errors import AgencyError, LLMOutputError
from agency.guided import work_schema
from agency.llm.client import CallContext
from agency.llm.router import next_tier
from agency.logs import redact
from agency.roles import specialist as spec_role
from agency.schemas import AgentTurn, SpecialistDefinition
from agency.states import TASK, TaskState, transition


class Work:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def turn(self, pid: int, tid: int) -> None:
        core = self.core
        cfg = core.settings.engine
        async with core.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p, m = f.task, f.project, f.assignee
            seq = t.seq
            if t.step >= cfg.turn_steps:
                await escalate(s, p, t, f"no submission after {cfg.turn_steps} turns", frm=(TaskState.RUNNING,), seq=seq)
                await core.commit(s, pid)
                return
            sysmsg = await repos.active_system_message(s, m.id)
            definition = SpecialistDefinition.model_validate(m.definition) if m.definition else None
            custom = [(c.name, c.description) for c in definition.custom_commands] if definition else []
            task_view = core.task_view(t)
            dep_outputs = {key: output or "" for key, output in (await s.execute(DEP_OUTPUTS, {"tid": t.id})).all()}
            memories, retrieved = await core.recall_for(p.agency_id, m.handle, m.role, f"{t.title}. {t.description}", pid)
            schema = work_schema(t.key, min_output_chars=cfg.min_output_chars, tools=core.tools is not None)
            msgs = spec_role.work_messages(
                sysmsg.text if sysmsg else f"You are {m.handle}, a {m.role}.",
                objective=p.objective, task=task_view, dep_outputs=dep_outputs, context=t.context or [],
                review_notes=t.review_notes, memories=memories, custom=custom,
                tools=core.tools.describe_for("specialist") if core.tools is not None else "",
                schema=schema, min_output_chars=cfg.min_output_chars,
            )
            ctx = CallContext(role="specialist", purpose="work", agency_id=p.agency_id, project_id=pid, task_id=tid,
                              member_id=m.id, stream_id=t.stream_id, tier=t.tier, retrieved=retrieved,
                              call_key=f"t{tid}:a{t.attempt}:r{t.revision}:s{t.step}",
                              meta={"objective": p.objective, "purpose": "work", "task": task_view, "dep_outputs": dep_outputs,
                                    "review_notes": t.review_notes, "handle": m.handle, "role": m.role, "step": t.step})
            handle, stream_id, member_id, step, attempt, revision = m.handle, t.stream_id, m.id, t.step, t.attempt, t.revision
        try:
            turn = await core.llm.call(AgentTurn, msgs, ctx, json_schema=schema)
        except LLMOutputError as e:
            await self._invalid_output(pid, tid, seq, e)
            return
        custom_names = {c[0] for c in custom}
        feedback: list[str] = []
        parsed: list[cmdlib.Command] = []
        for raw in turn.commands:
            try:
                c = cmdlib.parse(raw, custom_names)
                cmdlib.authorize(c, "specialist", is_model=True, custom=custom_names)
                parsed.append(c)
            except AgencyError as e:
                feedback.append(f"command {raw[:80]!r} refused: {e.user_message}")
        all_asks = [c for c in parsed if c.name == "ask"]
        asks = all_asks[: max(cfg.ask_hops, 0)]
        if len(all_asks) > len(asks):
            feedback.append(f"only {cfg.ask_hops} questions per turn are routed")
        tool_items = await self._run_tools(pid, tid, handle, turn) if turn.tools else []
        async with core.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p = f.task, f.project
            aid = p.agency_id
            events: list[tuple[str, dict[str, Any]]] = []
            posts: list[tuple[str, str, str, dict[str, Any]]] = []  # (address, persona, text, options)
            if turn.message:
                posts.append((thread_addr(stream_id, member_id), handle, turn.message, {}))
            if turn.output.strip() and norm(turn.output) != norm(turn.message):  # the work product is part of the record of work
                posts.append((thread_addr(stream_id, member_id), handle, turn.output, {}))
            ctx_items: list[dict[str, Any]] = []
            output: str | None = None
            blocked: str | None = None
            for c in parsed:
                if c.name == "submit":
                    if c.args["task"] != t.key:
                        feedback.append(f"/submit {c.args['task']} refused: your task is {t.key}")
                        continue
                    out = turn.output.strip() or c.args.get("output") or turn.message
                    if not out.strip():
                        feedback.append("/submit refused: the output is empty; put your complete work in `output`")
                        continue
                    repeated = await self._repeats(s, t, out)
                    if repeated:
                        feedback.append(f"/submit refused: {repeated}")
                        events.append(("repetition", {"detail": repeated}))
                        continue
                    problem = submission_problem(out, task_view, min_chars=cfg.min_output_chars, objective=p.objective)
                    if problem:  # no work yet: back to the specialist, no review call spent
                        feedback.append(f"/submit refused: {problem}")
                        events.append(("submission_returned", {"key": t.key, "reason": problem, "chars": len(out.strip())}))
                        posts.append((thread_addr(stream_id, member_id), SYSTEM,
                                      f"@{handle} {t.key} was returned before review: {problem}", {"kind": "notice"}))
                        continue
                    output = redact(out)
                elif c.name == "blocked":
                    blocked = c.args["reason"]
                elif c.name == "accept":
                    if c.args["task"] != t.key:
                        feedback.append(f"/accept {c.args['task']} refused: your task is {t.key}")
                elif c.name == "commands":
                    ctx_items.append({"from": SYSTEM, "text": "Your commands:\n" + cmdlib.help_text("specialist", custom)})
                elif c.custom:
                    posts.append((thread_addr(stream_id, member_id), handle, f"/{c.name} {c.args.get('text', '')}".strip(), {"kind": "action"}))
                elif c.name != "ask":
                    feedback.append(f"/{c.name} is not available while working on a task")
            pending: list[dict[str, Any]] = []
            for i, c in enumerate(asks):
                to, question = c.args["handle"], c.args["question"]
                target = (await repos.member_by_handle(s, aid, to) if not to.startswith("<@")
                          else await repos.member_by_user(s, aid, to.strip("<@!>")))
                if target is None:
                    ctx_items.append({"from": SYSTEM, "text": f"/ask refused: there is no member @{to}; members: {', '.join(await project_handles(s, pid))}"})
                    continue
                where = await member_address(s, pid, target, stream_id)
                posts.append((where, handle, f"@{target.handle} {question}", {"mentions": [target.external_user_id] if target.external_user_id else []}))
                events.append(("ask", {"asker": handle, "to": target.handle}))
                if target.kind == "human":
                    ctx_items.append({"from": SYSTEM, "text": f"Your question went to {target.display_name or target.handle} (a person); "
                                                               "their reply will reach you when they answer. Continue meanwhile."})
                else:
                    pending.append({"to_id": target.id, "to": target.handle, "asker": handle, "question": question, "where": where,
                                    "key": f"t{tid}:a{attempt}:r{revision}:s{step}:ask:{target.handle}" + (f":{i}" if i else ""),
                                    "reminded": False})
            ctx_items += tool_items
            own = "" if output is not None else (turn.message.strip() or turn.output.strip())[:4000]
            if own and any(c.get("from") == f"{handle} (you)" and norm(c.get("text", "")) == norm(own) for c in t.context or []):
                feedback.append("you repeated an earlier turn word for word; change your approach, or `/submit` your work")
                events.append(("repetition", {"detail": "repeated turn"}))
            if feedback:
                ctx_items.append({"from": SYSTEM, "text": "; ".join(feedback)})
                events.append(("command_refused", {"feedback": feedback}))
            # the task's conversation (own drafts, answers, feedback) is kept and re-injected each turn, bounded
            context = [*(t.context or []), *([{"from": f"{handle} (you)", "text": own}] if own else []), *ctx_items][-HISTORY_ITEMS:]
            if output is None and not blocked and not asks and not turn.tools:
                hint = (f"No submission yet: you wrote an `output` but no `/submit {t.key}` in `commands`." if turn.output.strip()
                        else f"No submission yet: when your work meets the criteria, add `/submit {t.key}`.")
                context = [*context, {"from": SYSTEM, "text": hint}][-HISTORY_ITEMS:]
            values: dict[str, Any] = {"context": context, "step": step + 1, "asks": pending}
            if blocked and output is None:
                applied = await escalate(s, p, t, f"@{handle} is blocked: {blocked}", frm=(TaskState.RUNNING,), seq=seq, values=values)
            elif output is not None:
                applied = bool(await transition(s, TASK, tid, TaskState.REVIEW, frm=(TaskState.RUNNING,), where=[TaskRow.seq == seq],
                                                values={**values, "output": output, "asks": []}, project_id=pid, event="submitted",
                                                key=t.key, revision=t.revision))
            else:
                applied = bool(await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.RUNNING,), where=[TaskRow.seq == seq], values=values))
            if not applied:
                await s.rollback()  # already applied by another runner, or the task moved on meanwhile
                return
            for address, persona, text, opts in posts:
                post(s, aid, pid, address, persona, text, **opts)
            for kind, data in events:
                repos.event(s, pid, kind, task_id=tid, **data)
            await core.commit(s, pid)

    async def _invalid_output(self, pid: int, tid: int, seq: int, e: LLMOutputError) -> None:
        """A work turn that did not validate even after the repair round: next tier, feedback, one step used."""
        core = self.core
        async with core.db.session() as s:
            t = await s.get(TaskRow, tid)
            assert t is not None
            values: dict[str, Any] = {
                "step": t.step + 1,
                "context": [*(t.context or []), {"from": SYSTEM, "text": f"Your last reply could not be used: {e.errors[:500]}. Reply with valid JSON."}],
            }
            up = next_tier(t.tier, list(core.settings.llm.tiers))
            if up and up != t.tier:
                values["tier"] = up
            frm_tier = t.tier
            if not await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.RUNNING,), where=[TaskRow.seq == seq], values=values,
                                    project_id=pid, event="invalid_output", errors=e.errors[:500]):
                return
            if "tier" in values:
                repos.event(s, pid, "tier_escalated", task_id=tid, frm=frm_tier, to=up, reason="invalid output")
            await core.commit(s, pid)

    async def _run_tools(self, pid: int, tid: int, handle: str, turn: AgentTurn) -> list[dict[str, Any]]:
        """Validate and run the turn's tool intents; their results reach the agent next turn."""
        core = self.core
        if core.tools is None:
            return [{"from": SYSTEM, "text": "No tools are available in this agency; do the work directly."}]
        from agency.db.tables import ProjectRow
        from agency.tools.base import ToolCall, ToolContext

        async with core.db.session() as s:
            p = await s.get(ProjectRow, pid)
            t = await s.get(TaskRow, tid)
            assert p is not None and t is not None
            tctx = ToolContext(agency_id=p.agency_id, member=handle, role="specialist", project_id=pid, task_key=t.key)
        calls = []
        out: list[dict[str, Any]] = []
        for req in turn.tools:
            try:
                calls.append(ToolCall(tool=req.tool, args=req.args))
            except Exception as ex:  # malformed intent: feedback, never a crash
                out.append({"from": SYSTEM, "text": f"tool call {req.tool!r} refused: {ex}"})
        results = await core.tools.execute_many(calls, tctx)
        async with core.db.session() as s:
            for call, r in zip(calls, results):
                repos.event(s, pid, "tool_call", task_id=tid, tool=call.tool, ok=r.ok, error=r.error, duration_ms=r.duration_ms)
            await s.commit()
        out += [{"from": f"tool {r.tool}", "text": redact(r.for_agent())} for r in results]  # tool output is data from outside: no secrets
        return out

    @staticmethod
    async def _repeats(s: AsyncSession, t: TaskRow, out: str) -> str | None:
        """A member repeating an earlier output: an unchanged resubmission, or another task's output."""
        n = norm(out)
        if len(n) < 20:
            return None
        if t.revision > 0 and t.output and norm(t.output) == n:
            return "it repeats your previous submission unchanged; address the review notes"
        others = (await s.execute(OTHER_OUTPUTS, {"pid": t.project_id, "tid": t.id})).all()
        for key, other in others:
            if norm(other) == n:
                return f"it repeats the output of {key}; do this task's own work"
        return None


