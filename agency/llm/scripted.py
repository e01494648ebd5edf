"""Test models in the spirit of pydantic-ai's TestModel and FunctionModel.

``FunctionModel(fn)`` answers with whatever ``fn(request)`` returns (a str, a
dict, a pydantic model, or an Exception to raise). ``ScriptedModel`` answers
from per-schema or per-purpose scripts and falls back to the simulator, so a
test only scripts the part it is about.
"""
from __future__ import annotations

import asyncio
import inspect
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from agency.llm.base import ModelReply, ModelRequest
from agency.llm.simulated import SimulatedModel
from agency.llm.usage import estimate_tokens

Answer = str | dict | BaseModel | Exception
Handler = Callable[[ModelRequest], Any]


def _text(answer: Any) -> str:
    if isinstance(answer, BaseModel):
        return answer.model_dump_json()
    if isinstance(answer, (dict, list)):
        return json.dumps(answer)
    return str(answer)


class FunctionModel:
    def __init__(self, fn: Handler, *, name: str = "function", delay: float = 0.0) -> None:
        self.fn = fn
        self.name = name
        self.delay = delay
        self.requests: list[ModelRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: ModelRequest) -> ModelReply:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.fn(request)
            if inspect.isawaitable(answer):
                answer = await answer
        finally:
            self.in_flight -= 1
        if isinstance(answer, Exception):
            raise answer
        text = _text(answer)
        return ModelReply(
            text=text,
            model=request.model or self.name,
            prompt_tokens=sum(estimate_tokens(m.get("content", "")) for m in request.messages),
            completion_tokens=estimate_tokens(text),
            simulated=True,
        )

    def calls(self, schema_name: str | None = None, purpose: str | None = None) -> list[ModelRequest]:
        return [
            r
            for r in self.requests
            if (schema_name is None or r.schema_name == schema_name) and (purpose is None or r.purpose == purpose)
        ]


class ScriptedModel(FunctionModel):
    """Scripts keyed by schema name (``"WorkPlan"``) or ``"purpose:<purpose>"`` or
    ``"role:<role>"``; each a list of answers used in order (the last repeats)
    or a callable. Anything unscripted is answered by the simulator."""

    def __init__(self, scripts: dict[str, Any] | None = None, *, delay: float = 0.0) -> None:
        self.scripts: dict[str, Any] = dict(scripts or {})
        self.used: dict[str, int] = defaultdict(int)
        self.sim = SimulatedModel()
        super().__init__(self._answer, name="scripted", delay=delay)

    async def _answer(self, request: ModelRequest) -> Any:
        for key in (f"purpose:{request.purpose}", f"role:{request.role}", request.schema_name):
            if key in self.scripts:
                script = self.scripts[key]
                if callable(script):
                    result = script(request)
                    if inspect.isawaitable(result):
                        result = await result
                    if result is not None:
                        return result
                    continue
                i = self.used[key]
                self.used[key] += 1
                return script[min(i, len(script) - 1)]
        return (await self.sim.generate(request)).text
