import json

import pytest
from sqlalchemy import select

from agency.db.session import Database
from agency.db.tables import LLMCallRow
from agency.errors import LLMError, LLMOutputError, TransientModelError
from agency.llm.client import CallContext, LLMClient, ModelSet
from agency.llm.scripted import FunctionModel
from agency.schemas import Review
from agency.settings import Settings

GOOD = {"decision": "accept", "criteria_met": [True], "notes": "", "message": "fine"}


async def _client(settings: Settings, fn) -> tuple[LLMClient, FunctionModel, Database]:  # noqa: ANN001
    db = Database(settings.db_url)
    await db.upgrade()
    model = FunctionModel(fn)
    return LLMClient(db, ModelSet({"fast": (model, "gpt-4o-mini")}, "fast", simulated=True), settings), model, db


async def _rows(db: Database) -> list[LLMCallRow]:
    async with db.session() as s:
        return list((await s.execute(select(LLMCallRow).order_by(LLMCallRow.id))).scalars())


async def test_code_fences_are_tolerated_without_repair(settings: Settings) -> None:
    client, model, db = await _client(settings, lambda r: "```json\n" + json.dumps(GOOD) + "\n```")
    out = await client.call(Review, [{"role": "user", "content": "review"}], CallContext(role="collaborator", purpose="review"))
    assert out.decision == "accept"
    assert len(model.requests) == 1
    rows = await _rows(db)
    assert [r.outcome for r in rows] == ["ok"] and rows[0].prompt_tokens > 0 and rows[0].cost_usd > 0
    await db.dispose()


async def test_one_repair_round_sends_the_validation_error_back(settings: Settings) -> None:
    answers = iter([{"decision": "revise"}, {"decision": "revise", "notes": "tighten the intro"}])
    client, model, db = await _client(settings, lambda r: next(answers))
    out = await client.call(Review, [{"role": "user", "content": "review"}], CallContext(role="collaborator", purpose="review", call_key="k1"))
    assert out.notes == "tighten the intro"
    repair_prompt = model.requests[1].messages[-1]["content"]
    assert "did not validate" in repair_prompt and "notes" in repair_prompt
    assert [r.outcome for r in await _rows(db)] == ["invalid", "repaired"]
    await db.dispose()


async def test_still_invalid_after_repair_is_a_typed_error(settings: Settings) -> None:
    client, model, db = await _client(settings, lambda r: "not json at all")
    with pytest.raises(LLMOutputError) as e:
        await client.call(Review, [{"role": "user", "content": "x"}], CallContext(role="collaborator", purpose="review"))
    assert e.value.schema_name == "Review" and "not valid JSON" in e.value.errors
    assert len(model.requests) == 2
    assert [r.outcome for r in await _rows(db)] == ["invalid", "invalid"]
    await db.dispose()


async def test_recorded_answer_is_not_paid_for_again(settings: Settings) -> None:
    client, model, db = await _client(settings, lambda r: GOOD)
    ctx = lambda: CallContext(role="collaborator", purpose="review", call_key="t1:review")  # noqa: E731
    await client.call(Review, [{"role": "user", "content": "x"}], ctx())
    again = await client.call(Review, [{"role": "user", "content": "x"}], ctx())
    assert again.decision == "accept"
    assert len(model.requests) == 1
    assert len(await _rows(db)) == 1
    await db.dispose()


async def test_transient_errors_are_retried_then_reported(settings: Settings) -> None:
    settings.llm.max_retries = 2
    settings.llm.retry_max_wait_seconds = 0.01
    calls = {"n": 0}

    def flaky(r):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] < 3:
            return TransientModelError("429 Too Many Requests", retry_after=0.001, status=429)
        return GOOD

    client, model, db = await _client(settings, flaky)
    out = await client.call(Review, [{"role": "user", "content": "x"}], CallContext(role="collaborator", purpose="review"))
    assert out.decision == "accept" and calls["n"] == 3

    client2, _, db2 = await _client(settings, lambda r: TransientModelError("503", status=503))
    with pytest.raises(LLMError, match="kept failing after 2 retries"):
        await client2.call(Review, [{"role": "user", "content": "x"}], CallContext(role="collaborator", purpose="review"))
    assert [r.outcome for r in await _rows(db2)][-1] == "error"
    await db.dispose()
    await db2.dispose()


async def test_circuit_breaker_pauses_a_failing_model_instead_of_burning_retries(settings: Settings) -> None:
    settings.llm.max_retries = 6
    settings.llm.retry_max_wait_seconds = 0.001
    settings.llm.circuit_failures = 3
    settings.llm.circuit_cooldown_seconds = 0.3
    calls: list[float] = []
    import time

    def flaky(r):  # noqa: ANN001, ANN202
        calls.append(time.monotonic())
        if len(calls) <= 3:
            return TransientModelError("500", status=500)
        return GOOD

    client, model, db = await _client(settings, flaky)
    out = await client.call(Review, [{"role": "user", "content": "x"}], CallContext(role="collaborator", purpose="review"))
    assert out.decision == "accept"
    assert client.breaker.trips == 1
    assert len(calls) == 4  # three failures trip the breaker; the fourth call waits for the cooldown, then succeeds
    assert calls[3] - calls[2] >= 0.25  # it waited for the circuit, not for a retry backoff (0.001 s)
    assert not client.breaker.is_open("gpt-4o-mini")
    await db.dispose()


async def test_every_request_carries_the_reply_bound_of_its_purpose(settings: Settings) -> None:
    answers = iter([{"decision": "revise"}, GOOD])  # an invalid reply, then the repair round
    client, model, db = await _client(settings, lambda r: json.dumps(next(answers)))
    await client.call(Review, [{"role": "user", "content": "review"}], CallContext(role="collaborator", purpose="review"))
    limits = settings.llm.max_tokens
    assert [r.max_tokens for r in model.requests] == [limits["review"], limits["review"]]
    assert client._max_tokens("answer") == limits["default"]
    await db.dispose()
