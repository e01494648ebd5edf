"""A worker process for the multi-process test: several of these share one SQLite file.

    python tests/reliability/multi_worker.py WORKDIR [--create N]

Each starts the whole service (engine and outbox) on ``WORKDIR/data``, creates
``N`` projects of its own (autonomous), and runs until every project of the
agency is finished. The chat port is the kill test's file-backed one, made to
dedupe by nonce across processes (it re-reads what the platform already has
before accepting a message), the platform contract of the real adapter.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agency.llm.client import ModelSet  # noqa: E402
from agency.models import TERMINAL  # noqa: E402
from agency.ports import OutboundMessage  # noqa: E402
from tests.reliability.crash_worker import AGENCY, DIRECTOR, CountingModel, FileChat, _append  # noqa: E402

OBJECTIVES = ["Prepare a checklist for opening a small bakery", "Plan a neighbourhood book swap",
              "Write a guide to composting for city apartments", "Draft a welcome pack for new volunteers"]


class SharedFileChat(FileChat):
    def _accept(self, op: str, message: OutboundMessage, space: str) -> str:
        if self.chat.exists():  # what the platform has, whoever sent it
            for line in self.chat.read_text().splitlines():
                r = json.loads(line)
                self.seen[r["nonce"]] = r["external_id"]
        return super()._accept(op, message, space)


async def main(work: Path, create: int) -> int:
    from agency.service import AgencyService
    from agency.settings import load_settings

    os.environ["ATEAMS_CONFIG"] = str(work / "absent.toml")
    settings = load_settings(data_dir=work / "data", memory={"enabled": False}, learning={"enabled": False},
                             engine={"poll_seconds": 0.2, "lease_seconds": 5})
    model = CountingModel(work / "progress.jsonl")
    models = ModelSet({"fast": (model, "gpt-4o-mini"), "strong": (model, "gpt-4o")}, "fast", simulated=True)
    service = await AgencyService.create(settings, SharedFileChat(work, None), models=models)
    await service.ensure_agency(AGENCY, "Multi-process agency")
    await service.start()
    mine = [(await service.new_project(AGENCY, OBJECTIVES[i % len(OBJECTIVES)], oversight="autonomous", actor=DIRECTOR)).id
            for i in range(create)]
    _append(work / "runs.jsonl", {"pid": os.getpid(), "created": mine, "started": True})
    try:
        async with asyncio.timeout(90):
            while True:
                projects = await service.projects(AGENCY)
                if projects and all(p.status in TERMINAL for p in projects) and len(projects) >= _expected(work):
                    break
                await asyncio.sleep(0.05)
            await service.settle()
    finally:
        await service.close()
    _append(work / "runs.jsonl", {"pid": os.getpid(), "finished": True})
    return 0


def _expected(work: Path) -> int:
    return int((work / "expected").read_text()) if (work / "expected").exists() else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--create", type=int, default=0)
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.work, args.create)))
