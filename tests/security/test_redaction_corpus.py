"""The redaction corpus: realistic fake secrets of every well-known shape, checked wherever text leaves the
process: the logs, the chat (the outbox, through ``repos.post``, into the messages table and out to the
platform), the audit export, and the prompts an OpenAI-compatible model receives (a local mock server
records what reached it). A negative corpus of ordinary text (prose, git SHAs, UUIDs, hashes, code, the
project's own prompts) comes out unchanged."""
from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from agency import logs
from agency.audit import write_audit
from agency.console import ConsoleChat
from agency.db import repos
from agency.db.session import Database
from agency.db.tables import EventRow, LLMCallRow, MessageRow
from agency.llm.client import CallContext, LLMClient, ModelSet
from agency.llm.openai import OpenAIModel
from agency.llm.scripted import ScriptedModel
from agency.logs import configure_logging, redact
from agency.schemas import Review
from bench.mock_openai import MockOpenAIServer
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


# -- fake secrets, each of a real shape --------------------------------------------------------------------
AWS_KEY_ID = "AKIAQ7XZ3K5PLM2WN4RT"
AWS_TEMP_KEY_ID = "ASIAY3K7Q2WZ8PLM4XRT"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY9zq8v2LkQm"
AWS_SECRET_2 = "Tq8v/2LkQmwJalrXUtnFEMI+K7MDENGbPxRfiCY9"
GH_CLASSIC = "ghp_R7mK2pX9vQ4wL8nT3sY6hB1cJ5fD0gA2eZ4u"
GH_FINE = "github_pat_11ABQ7XZY0aBcDeFgHiJkL_" + "Zq8v2LkQmwJalrXUtnFEMIK7MDENGbPxRfiCY9zq8v2LkQmwJalrXUtnF12"
SLACK_BOT = "xoxb-2716134213-5302946218054-ZkT3v9QwErTyUiOpAsDfGhJk"
SLACK_USER = "xoxp-2716134213-2716134299-5302946218054-4f1a9c0e8b7d6a5f4e3d2c1b0a9f8e7d"
SLACK_HOOK = "https://hooks.slack.com/services/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"
GOOGLE_KEY = "AIzaSyB3x-7QmN2pL9kV4tR8wZ1cY6hJ0dF5gE3"
STRIPE_LIVE = "sk_live_51NzQ7aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789abcdEFGHijkl"  # longer than the plugin's 24
STRIPE_RESTRICTED = "rk_live_51NzQ7aBcDeFgHiJkLmNoPqRsTu"
JWT = (f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': 'user-4821', 'name': 'Jane Doe', 'iat': 1716239022})}"
       ".Qm9vZ2llV29vZ2llU2lnbmF0dXJlX3Rlc3Q0Mg")
BEARER = "ya29.a0AfB_byC8kQx3Lm7TzPq2wN9vRt5sJd4hYe6Ug1oKi0"
OPENAI_PROJECT = "sk-proj-4fQ9zX2mL7pR1tV8wY3bN6cJ0hK5dG2eA9sU4iO7"
ANTHROPIC = "sk-ant-api03-Zq8v2LkQmwJalrXUtnFEMIK7MDENGbPxRfiCY9-abcDEF12"
DISCORD_BOT = "MTE4NjQ1MjM5ODc2NTQzMjEw.GhT2aB.x9Zq8v2LkQmwJalrXUtnFEMIK7MDENGbPxRf"
GITLAB = "glpat-xY7zQ2wE9rT4uI1oP3aS"
SENDGRID = "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"
NPM = "npm_Zq8v2LkQmwJalrXUtnFEMIK7MDENGbPxRf12"
DB_PASSWORD = "Zr7kQ2pLm9x"
ENV_PASSWORD = "Hq2#Zx9!Lm4Pw"
JSON_PASSWORD = "Vb8!nQ2#rT6y"
# the configured secrets, in shapes no detector knows: redacted because they are the configured values
CONFIGURED_KEY = "oa-live-7Hq2Zx9Lm4Pw8Rt6"
CONFIGURED_TOKEN = "plain-discord-token-value-Q7W8E9"

PEM_BODY = [
    "MIIEpAIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo",
    "9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ0iT9wCS0DRTXu269V264Vf/3jvre",
]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END RSA PRIVATE KEY-----"
OPENSSH = ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(PEM_BODY[:3])
           + "\n-----END OPENSSH PRIVATE KEY-----")
PKCS8_ENCRYPTED = ("-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + "\n".join(PEM_BODY[1:])
                   + "\n-----END ENCRYPTED PRIVATE KEY-----")


@dataclass
class Case:
    name: str
    text: str
    secrets: tuple[str, ...]
    keep: tuple[str, ...] = field(default=())  # ordinary text around the secret that must survive


CORPUS = [
    Case("aws access key id", f"Deploy with AWS_ACCESS_KEY_ID={AWS_KEY_ID} from the CI settings.", (AWS_KEY_ID,),
         ("Deploy with AWS_ACCESS_KEY_ID=", "from the CI settings.")),
    Case("aws credentials file", f"[default]\naws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\nregion = eu-west-1",
         (AWS_KEY_ID, AWS_SECRET), ("[default]", "region = eu-west-1")),
    Case("aws sts json", f'{{"AccessKeyId": "{AWS_TEMP_KEY_ID}", "SecretAccessKey": "{AWS_SECRET_2}", "Expiration": "2025-01-01"}}',
         (AWS_TEMP_KEY_ID, AWS_SECRET_2), ('"Expiration": "2025-01-01"',)),
    Case("github classic token", f"export GITHUB_TOKEN={GH_CLASSIC}\ngit push origin main", (GH_CLASSIC,), ("git push origin main",)),
    Case("github fine-grained token", f"The bot reads issues with {GH_FINE} (expires in 30 days).", (GH_FINE, GH_FINE[11:40]),
         ("(expires in 30 days).",)),
    Case("slack bot token", f"SLACK_BOT_TOKEN={SLACK_BOT}", (SLACK_BOT,)),
    Case("slack user token", f"Use {SLACK_USER} to post as me.", (SLACK_USER,), ("to post as me.",)),
    Case("slack webhook", f"Alerts go to {SLACK_HOOK} every hour.", (SLACK_HOOK, "q9W8e7R6t5Y4u3I2o1P0aSdF"), ("every hour.",)),
    Case("google api key", f"<script src=\"https://maps.googleapis.com/maps/api/js?key={GOOGLE_KEY}\"></script>", (GOOGLE_KEY,),
         ("https://maps.googleapis.com/maps/api/js?key=",)),
    Case("stripe live keys", f"stripe.api_key = '{STRIPE_LIVE}'  # restricted: {STRIPE_RESTRICTED}",
         (STRIPE_LIVE, STRIPE_LIVE[30:], STRIPE_RESTRICTED), ("stripe.api_key = ",)),
    Case("jwt", f"Set-Cookie: session={JWT}; HttpOnly; Secure", (JWT, JWT.split(".")[1], JWT.split(".")[2]), ("; HttpOnly; Secure",)),
    Case("bearer header", f"curl -H 'Authorization: Bearer {BEARER}' https://api.example.com/v1/me", (BEARER,),
         ("curl -H 'Authorization: Bearer ", "https://api.example.com/v1/me")),
    Case("openai project key", f"OPENAI_API_KEY={OPENAI_PROJECT} python app.py", (OPENAI_PROJECT,), ("python app.py",)),
    Case("anthropic key", f"client = Anthropic(api_key=\"{ANTHROPIC}\")", (ANTHROPIC,), ("client = Anthropic(api_key=",)),
    Case("discord bot token", f"bot.run('{DISCORD_BOT}')", (DISCORD_BOT, DISCORD_BOT[-12:]), ("bot.run(",)),
    Case("gitlab token", f"git clone https://oauth2:{GITLAB}@gitlab.com/team/app.git", (GITLAB,), ("@gitlab.com/team/app.git",)),
    Case("sendgrid key", f"SENDGRID_API_KEY={SENDGRID}", (SENDGRID,)),
    Case("npm token", f"//registry.npmjs.org/:_authToken={NPM}", (NPM,)),
    Case("password in a url", f"DATABASE_URL=postgres://app:{DB_PASSWORD}@db.internal:5432/app", (DB_PASSWORD,),
         ("postgres://app:", "@db.internal:5432/app")),
    Case("password in an env file", f"DB_HOST=db.internal\nDB_PASSWORD={ENV_PASSWORD}\nDB_PORT=5432", (ENV_PASSWORD,),
         ("DB_HOST=db.internal", "DB_PORT=5432")),
    Case("password in json", f'{{"username": "svc-backup", "password": "{JSON_PASSWORD}"}}', (JSON_PASSWORD,), ('"username": "svc-backup"',)),
    Case("pem private key", f"Here is the deploy key:\n{PEM}\nKeep it safe.", (*PEM_BODY, "BEGIN RSA PRIVATE KEY"),
         ("Here is the deploy key:", "Keep it safe.")),
    Case("openssh private key", f"id_ed25519:\n{OPENSSH}\n", (*PEM_BODY[:3], "OPENSSH PRIVATE KEY")),
    Case("encrypted pkcs8 key", f"{PKCS8_ENCRYPTED}\npassphrase in the vault", (*PEM_BODY[1:],), ("passphrase in the vault",)),
    Case("private key cut short", f"The key starts: -----BEGIN PRIVATE KEY-----\n{PEM_BODY[0]}\n{PEM_BODY[1][:40]}", (PEM_BODY[0], PEM_BODY[1][:40]),
         ("The key starts:",)),
    Case("configured openai key", f"my key is {CONFIGURED_KEY}, use it", (CONFIGURED_KEY,), ("my key is", ", use it")),
    Case("configured discord token", f"the bot token: {CONFIGURED_TOKEN}.", (CONFIGURED_TOKEN,), ("the bot token: ",)),
]
ALL_SECRETS = tuple(s for c in CORPUS for s in c.secrets)

NEGATIVE = [
    "Compost needs a balance of greens and browns; the key is to keep the pile as damp as a wrung-out sponge.",
    "The secret to a good review: read the success criteria first, then the output, then the criteria again.",
    "Password: at least 12 characters, one digit. Passwords are never stored in plain text.",
    "Authorization: required for the admin routes. The bearer of this letter may collect the parcel.",
    "We spent 41,230 tokens on the plan; the token budget is 600 per prompt and the API key lives in the environment.",
    "Commit 3634ed7f1a2b3c4d5e6f708192a3b4c5d6e7f8a9 fixed the outbox; see also \"132afd5\" and 'dde07de4718708b3adf53c'.",
    "sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" matches the download.",
    "Request 123e4567-e89b-12d3-a456-426614174000 (trace \"6ba7b810-9dad-11d1-80b4-00c04fd430c8\") took 212 ms.",
    '{"data": "SGVsbG8gV29ybGQhIFRoaXMgaXMgYSB0ZXN0IGJsb2Iu", "id": "f47ac10b58cc4372a5670e02b2c3d479"}',
    'password = os.environ["DB_PASSWORD"]\napi_key = settings.openai_api_key\nsecret = get_secret()\ntoken_budget = 600',
    'headers = {"Authorization": f"Bearer {token}"}\nrequests.get(url, headers=headers, timeout=10)',
    '{"password": "at least 12 characters", "api_key": "<your key>", "secret": "${VAULT_SECRET}", "pwd": "********"}',
    "db_password = DB_PASSWORD_FROM_VAULT\napi_key=SECRET_NAME_IN_THE_STORE",
    "<@123456789012345678> asked in <#987654321098765432> at 2024-05-01T12:34:56Z from 192.168.1.10 and 2001:db8::1.",
    "See https://example.com/docs?page=2&sort=asc and ssh://git@github.com/team/app.git for details.",
    "arn:aws:iam::123456789012:role/deploy-production reads s3://team-bucket/reports/2024/summary.csv",
    "task-management-and-scheduling-for-teams, desk-organizer-with-drawers-2024 and risk-assessment-matrix-v2",
    "| Task | Tier | Cost |\n|---|---|---|\n| T1 research | fast | $0.0042 |\n| T2 write-up | strong | $0.0310 |",
    "The file begins with BEGIN RSA PRIVATE KEY, which is how you tell a private key from a public one.",
    "MAX_RETRY_BACKOFF_SECONDS_FOR_UPLOADS = 30; AKIA is the prefix of an AWS access key id.",
]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CONFIGURED_KEY)
    monkeypatch.setenv("DISCORD_TOKEN", CONFIGURED_TOKEN)


def assert_clean(text: str, where: str) -> None:
    leaked = [s for s in ALL_SECRETS if s in text]
    assert not leaked, f"{where} leaked {leaked}"


# -- redact() itself -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_each_secret_shape_is_redacted(case: Case, configured: None) -> None:
    out = redact(case.text)
    for secret in case.secrets:
        assert secret not in out, (case.name, out)
    assert logs.REDACTED in out
    for ordinary in case.keep:
        assert ordinary in out, (case.name, out)
    assert redact(out) == out  # idempotent: a redacted text stays as it is


def test_a_private_key_block_is_removed_whole(configured: None) -> None:
    text = f"before\n{PEM}\nbetween\n{OPENSSH}\nafter"
    assert redact(text) == f"before\n{logs.REDACTED}\nbetween\n{logs.REDACTED}\nafter"


@pytest.mark.parametrize("text", NEGATIVE, ids=[f"negative-{i}" for i in range(len(NEGATIVE))])
def test_ordinary_text_is_left_unchanged(text: str, configured: None) -> None:
    assert redact(text) == text


def test_the_projects_own_prompts_and_config_are_left_unchanged(configured: None) -> None:
    files = sorted((ROOT / "specialists").glob("*.toml")) + [ROOT / "config.example.toml"]
    assert len(files) > 3
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert redact(text) == text, path.name


def test_the_cache_follows_the_configured_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"value {CONFIGURED_KEY} here"
    assert redact(text) == text  # not configured, and no detector knows this shape
    monkeypatch.setenv("OPENAI_API_KEY", CONFIGURED_KEY)
    assert redact(text) == f"value {logs.REDACTED} here"


def test_redaction_cost(capsys: pytest.CaptureFixture[str]) -> None:
    """A figure, not a limit: the cost of redacting a 2 kB chat message without secrets, new each time (the
    detectors run) and seen before (the cache answers). CPU time of this process, so that other work on the
    machine does not count."""
    base = "\n".join(NEGATIVE[:5] + NEGATIVE[13:18])
    message = (base * 3)[:2048]
    assert redact(message) == message
    n = 2000
    started = time.process_time()
    for i in range(n):
        redact(f"{i} {message}")  # a new text each time: no cache hit
    fresh = (time.process_time() - started) / n
    started = time.process_time()
    for _ in range(n):
        redact(message)
    cached = (time.process_time() - started) / n
    with capsys.disabled():
        print(f"\nredact() of a 2 kB message without secrets: {fresh * 1e6:.0f} us new, {cached * 1e6:.1f} us cached "
              f"(CPU time, {n} runs each)")


# -- where text leaves the process ---------------------------------------------------------------------------
def test_logs_carry_no_secret(configured: None) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        log = logging.getLogger("agency.corpus")
        for case in CORPUS:
            log.warning("case %s: %s", case.name, case.text)
            structlog.get_logger("agency.corpus").warning("structured", case=case.name, detail=case.text)
        try:
            raise RuntimeError(f"request with 'Authorization: Bearer {BEARER}' failed for {AWS_KEY_ID}")
        except RuntimeError:
            log.exception("a failure that carries secrets")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()
    out = stream.getvalue()
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 * len(CORPUS) + 1
    assert_clean(out, "the logs")
    assert out.count(logs.REDACTED) >= len(CORPUS)
    assert "Deploy with AWS_ACCESS_KEY_ID=" in out and "a failure that carries secrets" in out
    assert "RuntimeError: request with 'Authorization: Bearer [REDACTED]' failed for [REDACTED]" in out  # the traceback


async def test_chat_messages_carry_no_secret(make_service: Any, settings: Any, configured: None) -> None:
    chat = ConsoleChat(quiet=True)
    service = await make_service(ScriptedModel(), chat=chat)
    agency_id = await service.ensure_agency(AGENCY, "Test agency")
    async with service.db.session() as s:
        for case in CORPUS:
            repos.post(s, agency_id, None, "hq", "Analyst", f"{case.name}: {case.text}",
                       attachment=("notes.md", case.text))
        await s.commit()
    await service.settle()

    con = sqlite3.connect(settings.data_dir / "ateams.db")
    try:
        rows = con.execute("SELECT content, attachment_text, status FROM messages").fetchall()
    finally:
        con.close()
    assert len(rows) >= len(CORPUS)
    stored = "\n".join(f"{c}\n{a or ''}" for c, a, _ in rows)
    assert_clean(stored, "the messages table")
    assert stored.count(logs.REDACTED) >= 2 * len(CORPUS)
    sent = "\n".join(m.content + (m.attachment_text or "") for m in chat.sent)
    assert all(f"{c.name}: " in sent for c in CORPUS)  # every message went out
    assert_clean(sent, "the chat")


async def test_the_audit_export_carries_no_secret(make_service: Any, configured: None) -> None:
    """Rows written without redaction (by an older version, or by hand) are redacted by the export itself."""
    service = await make_service(ScriptedModel({"WorkPlan": [DIAMOND]}))
    info = await service.new_project(AGENCY, "Write a short guide to composting for city apartments", oversight="plan",
                                     actor=DIRECTOR)
    await wait_for(lambda: service.engine.pending_approval(info.id))
    agency_id = await service.ensure_agency(AGENCY, "Test agency")
    corpus = "\n".join(c.text for c in CORPUS)
    async with service.db.session() as s:
        s.add(EventRow(project_id=info.id, kind="note", data={"text": corpus, "items": [corpus], "nested": {"t": corpus}}))
        s.add(MessageRow(agency_id=agency_id, project_id=info.id, direction="in", address="hq", persona="Director",
                         kind="chat", content=corpus, attachment_name="a.txt", attachment_text=corpus, status="delivered"))
        s.add(LLMCallRow(agency_id=agency_id, project_id=info.id, role="pm", purpose="plan", model="m",
                         request={"messages": [{"role": "user", "content": corpus}]}, response=corpus, outcome="ok"))
        await s.commit()
    out = io.StringIO()
    assert await write_audit(service.db, info.id, out) > 3
    export = out.getvalue()
    assert_clean(export, "the audit export")
    assert export.count(logs.REDACTED) >= 5 * len(CORPUS)
    assert "Deploy with AWS_ACCESS_KEY_ID=" in export


async def test_prompts_reaching_the_model_carry_no_secret(settings: Any, configured: None) -> None:
    """Through the real client and the real OpenAI provider to a local mock server: what the server received
    (and the llm_calls record) has no secret, and a secret the model repeats is removed from its answer."""
    answer = {"decision": "revise", "criteria_met": [False], "notes": f"rotate {GH_CLASSIC} and {AWS_KEY_ID}",
              "message": f"found {STRIPE_LIVE}"}
    db = Database(settings.db_url)
    await db.upgrade()
    async with MockOpenAIServer(lambda body: answer) as server:
        provider = OpenAIModel(model="test-model", base_url=server.base_url, api_key="sk-test-key-for-the-mock-0", timeout=5.0)
        client = LLMClient(db, ModelSet({"fast": (provider, "test-model")}, "fast"), settings)
        try:
            messages = [
                {"role": "system", "content": "You review work. Never repeat a secret."},
                *({"role": "user", "content": f"{c.name}: {c.text}"} for c in CORPUS),
            ]
            review = await client.call(Review, messages, CallContext(role="collaborator", purpose="review"))
        finally:
            await provider.aclose()
        received = [json.dumps(body) for body in server.requests]
    assert received, "the mock received no request"
    for body in received:
        assert_clean(json.loads(body)["messages"].__repr__() + body, "a prompt sent to the model")
    sent = [m["content"] for m in json.loads(received[0])["messages"]]
    assert sent[0] == "You review work. Never repeat a secret."
    assert all(logs.REDACTED in m for m in sent[1:]), [m for m in sent[1:] if logs.REDACTED not in m]
    assert "Deploy with AWS_ACCESS_KEY_ID=" in sent[1]
    # the answer, as the agency uses it, and the record
    assert_clean(review.model_dump_json(), "the parsed reply")
    assert logs.REDACTED in review.notes
    async with db.session() as s:
        from sqlalchemy import select

        rows = list((await s.execute(select(LLMCallRow))).scalars())
    await db.dispose()
    assert rows and all(r.outcome == "ok" for r in rows)
    assert_clean(json.dumps(rows[0].request) + (rows[0].response or ""), "the llm_calls record")
