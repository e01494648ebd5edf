"""People's messages reach the right member; text commands; the bot never answers itself."""
from __future__ import annotations

import asyncio

import discord
import discord.ext.test as dpytest
from sqlalchemy import func, select

from agency.db.tables import FeedbackRow, MemberRow, MessageRow, SpaceRow, TaskRow
from agency.llm.scripted import ScriptedModel
from agency.llm.simulated import SimulatedModel
from bot_harness import eventually, scripted_models, start_harness, stop_harness


async def _running_project(h) -> dict[str, discord.abc.Messageable]:
    """A project waiting for a task approval (every_task oversight): streams and threads exist."""
    await h.setup_agency()
    await h.slash("project new", objective="Write a brief on espresso machines", oversight="every_task")
    msg, aid = await h.approval_message(1, "approach")
    await h.click(msg, f"ateams:approve:{aid}:1")
    msg, aid = await h.approval_message(1, "plan")
    await h.click(msg, f"ateams:approve:{aid}")
    await h.approval_message(1, "task")

    async def quiet() -> bool:  # T1 and T2 run side by side: wait until neither is still working
        async with h.service.db.session() as s:
            states = list((await s.execute(select(TaskRow.status).where(TaskRow.project_id == 1))).scalars())
        return bool(states) and not any(x in ("running", "review") for x in states)

    await eventually(quiet, what="T1 and T2 waiting for the Director")
    h.service._status_task.cancel()  # no status edits from here on: every later send would come from the relay
    await asyncio.gather(h.service._status_task, return_exceptions=True)
    await h.service.dispatcher.drain()
    async with h.service.db.session() as s:
        spaces = {r.address: int(r.external_id) for r in (await s.execute(select(SpaceRow))).scalars() if r.external_id}
    await dpytest.empty_queue()
    return {a: h.guild.get_channel_or_thread(i) for a, i in spaces.items()}


async def _inbound(h) -> list[MessageRow]:
    async with h.service.db.session() as s:
        return list((await s.execute(select(MessageRow).where(MessageRow.direction == "in").order_by(MessageRow.id))).scalars())


async def test_human_messages_reach_the_right_member(harness):
    h = harness
    spaces = await _running_project(h)
    thread_addr = next(a for a in spaces if a.startswith("thread:"))
    stream_addr = next(a for a in spaces if a.startswith("stream:"))
    thread, stream, overview = spaces[thread_addr], spaces[stream_addr], spaces["overview:1"]
    async with h.service.db.session() as s:
        specialist = await s.get(MemberRow, int(thread_addr.split(":")[2]))
        from agency.db.tables import StreamRow

        collab = await s.get(MemberRow, (await s.get(StreamRow, int(stream_addr.split(":")[1]))).collaborator_id)

    for channel, who in ((thread, specialist.handle), (stream, collab.handle), (overview, "PM")):
        before = len(h.rec.webhook_sends)
        await h.say(channel, "Please keep it under one page.")
        # the addressed member answers in the same place, under its own name
        # awaited inside this iteration, but bound anyway: a closure over loop variables reads as a bug
        reply = await eventually(lambda before=before, who=who, channel=channel: [
                                     s for s in h.rec.webhook_sends[before:] if s["username"] == who
                                     and (s["thread_id"] or s["channel_id"]) == channel.id],
                                 what=f"{who} to answer in {channel.name}")
        assert reply
    rows = await _inbound(h)
    assert [r.address for r in rows] == [thread_addr, stream_addr, "overview:1"]
    async with h.service.db.session() as s:
        fb = (await s.execute(select(FeedbackRow).where(FeedbackRow.source == "director", FeedbackRow.member_id == specialist.id))).scalars().all()
    assert fb and fb[0].text == "Please keep it under one page."


async def test_at_handle_addresses_a_virtual_member(harness):
    h = harness
    spaces = await _running_project(h)
    thread_addr = next(a for a in spaces if a.startswith("thread:"))
    async with h.service.db.session() as s:
        specialist = await s.get(MemberRow, int(thread_addr.split(":")[2]))
    before = len(h.rec.webhook_sends)
    await h.say(spaces["overview:1"], f"@{specialist.handle} which sources do you trust most?")
    rows = await _inbound(h)
    assert rows[-1].address == thread_addr  # routed to the specialist, not the PM
    await eventually(lambda: any(s["username"] == specialist.handle for s in h.rec.webhook_sends[before:]), what="the answer")
    note = dpytest.get_message()
    assert f"Passed to @{specialist.handle}" in note.content and f"<#{spaces[thread_addr].id}>" in note.content


async def test_text_commands_use_the_core_parser_and_checks(harness):
    h = harness
    spaces = await _running_project(h)
    overview = spaces["overview:1"]
    await dpytest.empty_queue()
    reply = await h.ask(overview, "/project status")
    assert "**Project #1**" in reply
    reply = await h.ask(overview, "/frobnicate now")
    assert "Unknown command `/frobnicate`" in reply
    reply = await h.ask(overview, "/feedback")
    assert "missing <handle>" in reply
    reply = await h.ask(overview, "/project pause", member=h.bob)
    assert "Only the Director" in reply
    assert await h.status(1) != "paused"
    reply = await h.ask(overview, "/project pause")
    assert "paused" in reply
    assert await h.status(1) == "paused"


async def test_the_bot_ignores_its_own_and_webhook_messages(harness):
    h = harness
    spaces = await _running_project(h)
    overview = spaces["overview:1"]
    inbound = len(await _inbound(h))
    assert inbound == 0  # dozens of persona messages went out; none came back in
    sends = len(h.rec.webhook_sends)
    await overview.send("/project cancel")  # the bot itself
    await dpytest.run_all_events()
    other_bot = dpytest.get_config().members[2]
    other_bot._user.bot = True
    await h.say(overview, "/project cancel", member=other_bot)
    assert len(await _inbound(h)) == 0
    assert await h.status(1) != "cancelled"
    assert len(h.rec.webhook_sends) == sends
    # a message in a channel that is not the agency's is left alone
    await h.say(h.general, "/project cancel")
    assert await h.status(1) != "cancelled"


async def test_human_specialist_assigned_todo_submit(settings, monkeypatch, tmp_path):
    """A person added to a stream is assigned a task by the PM, mentioned, lists it with /todo and submits it."""
    state: dict[str, str] = {}

    def plan(request):
        if "human" not in state:
            return None  # the simulator's plan
        data = SimulatedModel()._WorkPlan(request.meta or {})
        for t in data["tasks"]:
            if t["id"] == "T2":
                t["assignee"] = state["human"]
        data["specialists"] = [s for s in data["specialists"] if s["handle"] != "Analyst-A"]
        return data

    h = await start_harness(settings, monkeypatch, models=scripted_models(ScriptedModel({"WorkPlan": plan})))
    try:
        await h.setup_agency()
        out = await h.slash("project new", objective="Write brief number one", oversight="autonomous")
        assert "started" in str(out), out
        await h.finish(1)
        async with h.service.db.session() as s:
            research = (await s.execute(select(SpaceRow).where(SpaceRow.address.like("stream:%")).order_by(SpaceRow.id))).scalars().first()
        channel = h.guild.get_channel(int(research.external_id))
        reply = await h.ask(channel, f"/stream add-human {h.alice.mention}")
        assert "human specialist" in reply
        async with h.service.db.session() as s:
            alice = (await s.execute(select(MemberRow).where(MemberRow.kind == "human"))).scalar_one()
        assert alice.external_user_id == str(h.alice.id)
        state["human"] = alice.handle

        await h.slash("project new", objective="Write brief number two", oversight="autonomous")
        # the task is announced in its stream channel with a real mention of the person
        ready = await eventually(lambda: [s for s in h.rec.webhook_sends if f"T2 'Analyse needs and options' is ready for @{alice.handle}"
                                          in s["content"]], what="the assignment")
        assert f"<@{h.alice.id}>" in ready[0]["content"]
        assert ready[0]["allowed_mentions"]["users"] == [h.alice.id] or str(h.alice.id) in str(ready[0]["allowed_mentions"])
        stream2 = h.guild.get_channel(ready[0]["channel_id"])
        await dpytest.empty_queue()
        reply = await h.ask(stream2, "/todo", member=h.alice)
        assert "T2" in reply
        # the output can come as an attached text file
        output = tmp_path / "analysis.md"
        output.write_text("Home users need reliability; compare three machines by price and upkeep.", encoding="utf-8")
        await dpytest.empty_queue()
        await dpytest.message("/submit T2", channel=stream2, member=h.alice, attachments=[str(output)])
        await dpytest.run_all_events()
        assert "submitted for review" in dpytest.get_message().content
        await h.wait_status(2, "done", timeout=60)
        async with h.service.db.session() as s:
            t = (await s.execute(select(TaskRow).where(TaskRow.project_id == 2, TaskRow.key == "T2"))).scalar_one()
        assert t.status == "done" and t.output.startswith("Home users need reliability")
        # only the assignee submits
        reply = await h.ask(stream2, "/submit T2 mine", member=h.owner)
        assert "Only a human specialist" in reply
    finally:
        await stop_harness(h)


async def test_a_thread_nobody_declared_counts_as_its_channel(harness):
    h = harness
    spaces = await _running_project(h)
    stream_addr = next(a for a in spaces if a.startswith("stream:"))
    stream = spaces[stream_addr]
    side = await stream.create_thread(name="side chat", type=discord.ChannelType.public_thread)
    await h.say(side, "Let's double-check the prices.")
    rows = await _inbound(h)
    assert rows[-1].address == stream_addr
    async with h.service.db.session() as s:
        n = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "in"))).scalar()
    assert n == 1


async def test_hq_talk_stays_between_people_but_at_pm_reaches_the_pm(harness):
    h = harness
    await _running_project(h)
    hq = h.channel("hq")
    assert await h.ask(hq, "Lunch at noon?") == ""
    assert await _inbound(h) == []
    before = len(h.rec.webhook_sends)
    reply = await h.ask(hq, "@PM how is it going?")
    assert "Passed to @PM" in reply
    assert (await _inbound(h))[-1].address == "overview:1"
    await eventually(lambda: any(s["username"] == "PM" for s in h.rec.webhook_sends[before:]), what="the PM to answer")


async def test_director_reaction_on_a_persona_message_is_feedback(harness):
    """dpytest cannot deliver reactions, so the gateway event is handed to the listener as Discord would."""
    from types import SimpleNamespace

    h = harness
    await _running_project(h)
    async with h.service.db.session() as s:
        msg = (await s.execute(select(MessageRow).where(MessageRow.persona == "Researcher-A", MessageRow.status == "delivered",
                                                        MessageRow.address.like("thread:%")).limit(1))).scalar_one()
        ext = int((await s.execute(select(SpaceRow.external_id).where(SpaceRow.address == msg.address))).scalar_one())
    relay = h.bot.get_cog("Relay")

    def payload(member, emoji):  # noqa: ANN001, ANN202
        return SimpleNamespace(guild_id=h.guild.id, channel_id=ext, message_id=int(msg.external_id), member=member, emoji=emoji)

    await relay.on_raw_reaction_add(payload(h.owner, "\N{THUMBS UP SIGN}"))
    await relay.on_raw_reaction_add(payload(h.owner, "\N{THUMBS UP SIGN}"))  # the same reaction twice counts once
    await relay.on_raw_reaction_add(payload(h.alice, "\N{THUMBS DOWN SIGN}"))  # not the Director: ignored
    async with h.service.db.session() as s:
        rows = list((await s.execute(select(FeedbackRow).join(MemberRow, MemberRow.id == FeedbackRow.member_id)
                                     .where(FeedbackRow.source == "reaction", MemberRow.handle == "Researcher-A"))).scalars())
    assert [(r.rating, r.author) for r in rows] == [(5, h.owner.display_name)]
