"""A worker process for the kill -9 test: runs (or resumes) one project and exits when it is done.

    python tests/reliability/crash_worker.py WORKDIR [--kill-after-send N]

Everything lives in WORKDIR: the SQLite database (``data/``), ``chat.jsonl``
(every message the chat platform accepted, once per nonce), ``attempts.jsonl``
(every send/edit the outbox made, duplicates included) and ``progress.jsonl``
(one line per physical model call, written before the call).

The chat port is file-backed and idempotent by nonce, like Discord's
``enforce_nonce``: a resend after a crash carries the same nonce (``ateams-<row id>``)
and is acknowledged without posting twice. That is the platform contract the
outbox relies on: between "the platform accepted the message" and "the row is
marked delivered" a crash can happen, and only the nonce makes the resend safe.

``--kill-after-send N`` makes the worker SIGKILL itself right after the N-th
accepted message of this run, before the outbox marks it delivered: the worst
moment for exactly-once delivery.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agency.llm.base import ModelReply, ModelRequest  # noqa: E402
from agency.llm.client import ModelSet  # noqa: E402
from agency.llm.scripted import ScriptedModel  # noqa: E402
from agency.models import TERMINAL, Actor  # noqa: E402
from agency.ports import OutboundMessage, SpaceSpec  # noqa: E402

AGENCY = "crash-agency"
OBJECTIVE = "Prepare a checklist for opening a small bakery"
DIRECTOR = Actor(name="Director", external_user_id="director-1", is_director=True)


def _append(path: Path, record: dict) -> None:
    # one write(2) per line on an O_APPEND descriptor: a kill never leaves half a line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


class FileChat:
    """A ChatPort that "posts" by appending to chat.jsonl, skipping a nonce it already accepted."""

    def __init__(self, work: Path, kill_after_send: int | None) -> None:
        self.chat = work / "chat.jsonl"
        self.attempts = work / "attempts.jsonl"
        self.kill_after_send = kill_after_send
        self.accepted_this_run = 0
        self.seen: dict[str, str] = {}
        if self.chat.exists():
            for line in self.chat.read_text().splitlines():
                r = json.loads(line)
                self.seen[r["nonce"]] = r["external_id"]

    async def ensure_space(self, space: SpaceSpec) -> str:
        return space.address

    def _accept(self, op: str, message: OutboundMessage, space: str) -> str:
        _append(self.attempts, {"op": op, "id": message.id, "nonce": message.nonce, "pid": os.getpid()})
        key = message.nonce  # one per outbox row, stable across restarts
        if key in self.seen:  # the platform already has it: acknowledge, do not post again
            return self.seen[key]
        ext = f"file-{message.id}"
        _append(self.chat, {"op": op, "id": message.id, "nonce": key, "external_id": ext, "space": space,
                            "persona": message.persona, "kind": message.kind, "content": message.content[:200]})
        self.seen[key] = ext
        self.accepted_this_run += 1
        if self.kill_after_send is not None and self.accepted_this_run >= self.kill_after_send:
            os.kill(os.getpid(), signal.SIGKILL)  # accepted by the platform, not yet marked delivered
        return ext

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        return self._accept("send", message, space_external_id)

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        return self._accept("edit", message, space_external_id)


class CountingModel(ScriptedModel):
    """The scripted model (simulator answers), logging each physical call before making it."""

    def __init__(self, progress: Path) -> None:
        super().__init__(delay=0.03)
        self.progress = progress

    async def generate(self, request: ModelRequest) -> ModelReply:
        task = (request.meta or {}).get("task") or {}
        _append(self.progress, {"schema": request.schema_name, "purpose": request.purpose, "task": task.get("key"),
                                "step": request.meta.get("step"), "revision": request.meta.get("revision"), "pid": os.getpid()})
        return await super().generate(request)


async def main(work: Path, kill_after_send: int | None) -> int:
    from agency.service import AgencyService
    from agency.settings import load_settings

    os.environ["ATEAMS_CONFIG"] = str(work / "absent.toml")
    settings = load_settings(data_dir=work / "data", memory={"enabled": False}, learning={"enabled": False})
    model = CountingModel(work / "progress.jsonl")
    models = ModelSet({"fast": (model, "gpt-4o-mini"), "strong": (model, "gpt-4o")}, "fast", simulated=True)
    service = await AgencyService.create(settings, FileChat(work, kill_after_send), models=models)
    await service.ensure_agency(AGENCY, "Crash test agency")
    await service.start()  # resumes every unfinished project
    projects = await service.projects(AGENCY)
    if not projects:
        pid = (await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)).id
    else:
        pid = projects[0].id
    _append(work / "runs.jsonl", {"pid": os.getpid(), "project": pid, "status": projects[0].status if projects else "new"})
    try:
        async with asyncio.timeout(60):
            while (info := await service.project(pid)).status not in TERMINAL:
                if info.status == "blocked":
                    print(f"blocked: {info.error}", file=sys.stderr)
                    return 3
                a = await service.engine.pending_approval(pid)
                if a is not None:  # the Director approves every gate (decide is idempotent)
                    await service.decide(a.id, True, DIRECTOR)
                await asyncio.sleep(0.02)
            await service.engine.wait_project(pid)
            await service.settle()
    finally:
        await service.close()
    _append(work / "runs.jsonl", {"pid": os.getpid(), "project": pid, "status": info.status, "finished": True})
    return 0 if info.status == "done" else 4


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--kill-after-send", type=int, default=None)
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.work, args.kill_after_send)))
