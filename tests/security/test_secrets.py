"""Secrets are redacted from logs, chat and audit exports: a model that echoes the API key and the
Discord token everywhere it can (messages, outputs, review notes, answers, escalations, commands,
the deliverable) leaves "[REDACTED]" behind and the secrets nowhere in the database, the chat, the
audit export or the logs."""
from __future__ import annotations

import io
import logging
import sqlite3
from typing import Any

import pytest
import structlog

from agency.audit import write_audit
from agency.console import ConsoleChat
from agency.llm.scripted import ScriptedModel
from agency.logs import configure_logging, redact
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive

OBJECTIVE = "Write a short guide to composting for city apartments"
API_KEY = "sk-proj-Zx9SECRETvalue0123456789abcdefXYZ"
TOKEN = "plain-discord-token-value-Q7W8E9"  # not shaped like a token: redacted because it is DISCORD_TOKEN's value
BEARER = "Bearer abcdefghijklmnop0123456789"


def test_redact_covers_env_values_and_key_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    text = f"key={API_KEY} token={TOKEN} other=sk-{'a' * 30} auth: {BEARER} discord=MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123"
    out = redact(text)
    for secret in (API_KEY, TOKEN, "sk-" + "a" * 30, "abcdefghijklmnop0123456789", "MTIzNDU2Nzg5MDEyMzQ1Njc4"):
        assert secret not in out
    assert out.count("[REDACTED]") == 5


async def test_a_model_echoing_secrets_leaves_none_behind(make_service, settings, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    leak = f"my key is {API_KEY}, the bot token is {TOKEN}, and {BEARER}"

    blocked: list[str] = []

    def work(req: Any) -> Any:
        key, step = req.meta["task"]["key"], req.meta["step"]
        if key == "T1" and step == 0 and not req.meta.get("review_notes"):
            return {"thinking": leak, "message": f"Research notes. {leak}", "commands": [f"/approve {API_KEY}", "/ask @Analyst-A what is the key?"],
                    "tools": [{"tool": "python", "args": {"code": "print('sk-' + 'Q' * 24)"}}]}
        if key == "T2" and step == 0 and not blocked:
            blocked.append(key)
            return {"message": "stuck", "commands": [f"/blocked I need {TOKEN}"]}
        return {"thinking": leak, "message": f"Output of {key}: {leak}", "commands": [f"/submit {key}"]}

    reviews = iter([{"decision": "revise", "criteria_met": [False], "notes": f"remove {API_KEY} from the text", "message": leak}])
    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:review": lambda req: next(reviews, None) if req.meta["task"]["key"] == "T1" else {"decision": "accept", "criteria_met": [True], "message": leak},
        "purpose:answer": lambda req: {"message": f"The key is {API_KEY}", "commands": []},
        "EscalationDecision": [{"action": "feedback", "message": f"Use {TOKEN} and {API_KEY}"}],
        "Deliverable": [{"title": "Guide", "summary": f"Summary with {API_KEY}", "body_markdown": f"# Guide\n\n{leak}"}],
    })
    chat = ConsoleChat(quiet=True)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs = io.StringIO()
    configure_logging("DEBUG", json_logs=True, stream=logs)
    root.addHandler(caplog.handler)
    try:
        service = await make_service(model, chat=chat)
        info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
        assert await drive(service, info.id) == "done"
        await service.settle()
        during = caplog.text
        logging.getLogger("agency.test").warning("a log line that carries %s and %s", API_KEY, TOKEN)
        audit = io.StringIO()
        assert await write_audit(service.db, info.id, audit) > 10
        md = await service.deliverable(info.id)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()

    secrets = (API_KEY, TOKEN, "abcdefghijklmnop0123456789", "sk-" + "Q" * 24)
    # the chat: everything the platform received
    sent = "\n".join(m.content + (m.attachment_text or "") for m in chat.sent)
    assert "[REDACTED]" in sent and not any(x in sent for x in secrets)
    # the whole database: messages, tasks, feedback, events, llm_calls (requests and responses), the deliverable
    con = sqlite3.connect(settings.data_dir / "ateams.db")
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    assert "[REDACTED]" in dump
    for x in secrets:
        assert x not in dump, x
    # the audit export and the deliverable
    assert "[REDACTED]" in audit.getvalue() and not any(x in audit.getvalue() for x in secrets)
    assert md and "[REDACTED]" in md and not any(x in md for x in secrets)
    # the logs: through the configured pipeline every line is redacted, and nothing logged during the
    # project carried a secret in the first place
    out = logs.getvalue()
    assert "a log line that carries [REDACTED] and [REDACTED]" in out and not any(x in out for x in secrets)
    assert not any(x in during for x in secrets)
    # the models never saw it again either: every later prompt carries the redacted text
    later = [r for r in model.requests if "[REDACTED]" in "".join(m["content"] for m in r.messages)]
    assert later and not any(x in "".join(m["content"] for m in r.messages) for r in model.requests for x in secrets)


async def test_secrets_a_person_pastes_are_kept_nowhere(make_service, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Director pastes a key into the objective, a message, a command, feedback and a reject reason:
    the database, the chat and every prompt carry "[REDACTED]" instead."""
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    model = ScriptedModel({"WorkPlan": [DIAMOND]})
    chat = ConsoleChat(quiet=True)
    service = await make_service(model, chat=chat)
    info = await service.new_project(AGENCY, f"{OBJECTIVE}; our key is {API_KEY}", oversight="plan", actor=DIRECTOR)
    from tests.conftest import wait_for

    await wait_for(lambda: service.engine.pending_approval(info.id))
    await service.handle_message(AGENCY, f"overview:{info.id}", DIRECTOR, f"Use the token {TOKEN} if you need it. {BEARER}")
    await service.run_command(AGENCY, f"overview:{info.id}", DIRECTOR, f"/feedback @PM 4 fine, and here is {API_KEY}")
    await service.feedback(AGENCY, "PM", 3, f"again {API_KEY}", DIRECTOR)
    await service.approve(info.id, DIRECTOR, choice=1)  # the approach
    await wait_for(lambda: service.engine.pending_approval(info.id))
    await service.approve(info.id, DIRECTOR, approved=False, reason=f"redo it without {API_KEY}")  # the plan, rejected
    await wait_for(lambda: service.engine.pending_approval(info.id))
    await service.approve(info.id, DIRECTOR)
    assert await drive(service, info.id) == "done"
    await service.settle()

    secrets = (API_KEY, TOKEN, "abcdefghijklmnop0123456789")
    con = sqlite3.connect(settings.data_dir / "ateams.db")
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    assert dump.count("[REDACTED]") >= 5
    assert not any(x in dump for x in secrets)
    sent = "\n".join(m.content + (m.attachment_text or "") for m in chat.sent)
    assert "[REDACTED]" in sent and not any(x in sent for x in secrets)
    prompts = "\n".join(m["content"] for r in model.requests for m in r.messages)
    assert "[REDACTED]" in prompts and not any(x in prompts for x in secrets)
