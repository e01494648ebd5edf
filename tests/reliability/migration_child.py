"""Child process of ``test_migration_kill.py``: runs the migrations with a test hook, never imported by product code.

    migration_child.py trace  DB              the full upgrade (``upgrade_sync``), printing one JSON line per statement
                                              executed ({"i": n, "sql": ...}) and per commit ({"commit": k})
    migration_child.py kill   DB --after N    the same upgrade, SIGKILLing itself right after the N-th statement ran
    migration_child.py kill   DB --commit K   ... or right before the K-th COMMIT (every statement of it has run)
    migration_child.py start  DB [--pause N]  the normal start-up upgrade (``Database.upgrade``); with ``--pause``,
                                              prints "paused" after the N-th statement and waits for a line on stdin;
                                              prints "begun" before its first statement, and at the end a JSON line
                                              {"created": number of CREATE statements it ran}

The hooks are SQLAlchemy events on the ``Engine`` class, so they reach the engine that ``migrations/env.py``
builds without the product code knowing about them. Statements are counted in execution order, which is
deterministic for a given database, so the test can name a kill point by its number.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from agency.db.session import Database, upgrade_sync  # noqa: E402


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["trace", "kill", "start"])
    p.add_argument("db")
    p.add_argument("--after", type=int)
    p.add_argument("--commit", type=int)
    p.add_argument("--pause", type=int)
    args = p.parse_args()
    url = f"sqlite+aiosqlite:///{args.db}"
    seen = {"statements": 0, "commits": 0, "created": 0}

    def before(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if args.mode == "start" and seen["statements"] == 0:
            _say("begun")

    def after(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        seen["statements"] += 1
        n = seen["statements"]
        if statement.lstrip().upper().startswith("CREATE"):
            seen["created"] += 1
        if args.mode == "trace":
            _say(json.dumps({"i": n, "sql": " ".join(statement.split())}))
        elif args.mode == "kill" and args.after == n:
            os.kill(os.getpid(), signal.SIGKILL)
        elif args.mode == "start" and args.pause == n:
            _say("paused")
            sys.stdin.readline()

    def commit(conn) -> None:  # noqa: ANN001
        seen["commits"] += 1
        if args.mode == "trace":
            _say(json.dumps({"commit": seen["commits"], "after": seen["statements"]}))
        elif args.mode == "kill" and args.commit == seen["commits"]:
            os.kill(os.getpid(), signal.SIGKILL)

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    event.listen(Engine, "commit", commit)

    if args.mode == "start":
        async def start() -> None:
            db = Database(url)
            try:
                await db.upgrade()
            finally:
                await db.dispose()

        asyncio.run(start())
        _say(json.dumps({"created": seen["created"]}))
    else:
        upgrade_sync(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
