"""A kill at any point of a migration leaves a database that the next start completes; two processes
migrating one fresh file at once both succeed.

Each kill point is a child process (``migration_child.py``) running the full upgrade that SIGKILLs itself
right after the N-th statement, or right before a COMMIT; a fresh child then runs the normal start-up upgrade,
which must succeed and reach head with exactly the schema of a clean upgrade (``sqlite_master``, compared
entry by entry) and, for a database that had rows, exactly its rows. The points are every statement when
``ATEAMS_TEST_EVERY_KILL_POINT=1``; by default the first and last three statements, right before and right
after every statement that writes a row or drops or renames a table (the version row, a batch copy), every
COMMIT, and every k-th other write (about a dozen).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from alembic.script import ScriptDirectory

from agency.db.session import alembic_config, upgrade_sync

CHILD = Path(__file__).with_name("migration_child.py")
ROOT = Path(__file__).resolve().parents[2]
_LIMIT = 120  # a safety net for a hung child; every wait below ends with the child's exit


def _url(db: Path) -> str:
    return f"sqlite+aiosqlite:///{db}"


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _child(mode: str, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHILD), mode, str(db), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=_LIMIT)


def _trace(db: Path) -> list[dict]:
    r = _child("trace", db)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


_CONSTRAINT = ("PRIMARY KEY", "FOREIGN KEY", "UNIQUE", "CHECK", "CONSTRAINT")


def _normal(sql: str) -> str:
    """A CREATE statement with its table constraints sorted: alembic's batch mode writes a copied table's
    foreign keys in set order, which varies from process to process (string hashing)."""
    lines = [line.strip().rstrip(",").rstrip() for line in sql.splitlines()]
    if len(lines) < 3:
        return sql
    body = lines[1:-1]
    columns = [line for line in body if not line.upper().startswith(_CONSTRAINT)]
    return "\n".join([lines[0], *columns, *sorted(set(body) - set(columns)), lines[-1]])


def _schema(db: Path) -> list[tuple]:
    """Every entry of ``sqlite_master`` (tables, indexes) with its SQL."""
    with closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master")
        return sorted((kind, name, table, _normal(sql)) for kind, name, table, sql in rows)


def _version(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as c:
        return [v for (v,) in c.execute("SELECT version_num FROM alembic_version")]


def _rows(db: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(db)) as c:
        tables = [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        rows = {t: sorted(map(repr, c.execute(f'SELECT * FROM "{t}"'))) for t in tables}  # noqa: S608 - our own names
        if "deployment" in rows:  # one row with a fresh id per upgrade: only its presence is comparable
            rows["deployment"] = [f"{len(rows['deployment'])} row(s)"]
        return rows


def _is_write(sql: str) -> bool:
    return not sql.lstrip().upper().startswith(("PRAGMA", "SELECT", "BEGIN"))


def _kill_points(trace: list[dict]) -> list[tuple[str, int]]:
    """("after", N): kill right after statement N; ("commit", K): right before the K-th COMMIT."""
    statements = [e for e in trace if "i" in e]
    n = len(statements)
    if os.environ.get("ATEAMS_TEST_EVERY_KILL_POINT"):
        picks = set(range(1, n + 1))
    else:
        writes = [e["i"] for e in statements if _is_write(e["sql"])]
        picks = {1, 2, 3, n - 2, n - 1, n} | set(writes[:: max(1, len(writes) // 12)])
        for e in statements:
            if not e["sql"].upper().startswith(("CREATE", "PRAGMA", "SELECT", "BEGIN")):
                # a row written (the version row, a batch copy's rows), a table dropped or renamed: the
                # point right before it and right after it
                picks |= {e["i"] - 1, e["i"]}
    points = [("after", i) for i in sorted(p for p in picks if 1 <= p <= n)]
    return points + [("commit", e["commit"]) for e in trace if "commit" in e]


def _kill_then_start(db: Path, point: tuple[str, int]) -> str | None:
    """Kill an upgrade of ``db`` at ``point``, then start normally; the problem, or None when all is well."""
    how, n = point
    killed = _child("kill", db, f"--{how}", str(n))
    if killed.returncode != -signal.SIGKILL:
        return f"{point}: the upgrade was not killed (exit {killed.returncode}): {killed.stderr[-1500:]}"
    started = _child("start", db)
    if started.returncode != 0:
        errors = [line for line in started.stderr.splitlines() if "Error" in line] or [f"exit {started.returncode}"]
        return f"{point}: the next start failed: {errors[-1][:300]}"
    return None


def _run_points(make_db, points: list[tuple[str, int]]) -> list[str]:  # noqa: ANN001
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return [p for p in pool.map(lambda pt: _kill_then_start(make_db(pt), pt), points) if p is not None]


def test_a_kill_anywhere_in_the_first_upgrade_leaves_a_database_the_next_start_completes(tmp_path: Path) -> None:
    clean = tmp_path / "clean.db"
    trace = _trace(clean)
    reference, head = _schema(clean), _head()
    assert _version(clean) == [head]
    points = _kill_points(trace)
    assert len(points) >= 10

    dbs: dict[tuple[str, int], Path] = {}

    def fresh(point: tuple[str, int]) -> Path:
        dbs[point] = tmp_path / f"{point[0]}-{point[1]}.db"
        return dbs[point]

    problems = _run_points(fresh, points)
    assert not problems, f"{len(problems)} of {len(points)} kill points broke the next start:\n" + "\n".join(problems)
    for point, db in dbs.items():
        assert _version(db) == [head], point
        assert _schema(db) == reference, f"{point}: the schema differs from a clean upgrade's"


def _seed(db: Path) -> None:
    """One row in every table, with a value of the column's type in every column."""
    values = {"INT": 1, "CHAR": "x", "TEXT": "x", "CLOB": "x", "JSON": "{}", "DATE": "2026-01-01 00:00:00.000000",
              "TIME": "2026-01-01 00:00:00.000000", "FLOA": 1.5, "REAL": 1.5, "NUM": 1, "BOOL": 1}
    with closing(sqlite3.connect(db)) as c:
        tables = [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                                          " AND name != 'alembic_version'")]
        for t in tables:
            cols = list(c.execute(f'PRAGMA table_info("{t}")'))
            row = [next((v for k, v in values.items() if k in (typ or "").upper()), "x") for (_, _, typ, *_rest) in cols]
            c.execute(f'INSERT INTO "{t}" VALUES ({", ".join("?" * len(cols))})', row)  # noqa: S608 - our own names
        c.commit()


def test_a_kill_while_upgrading_a_database_with_rows_loses_no_row(tmp_path: Path) -> None:
    """A database at the first revision with a row in every table, upgraded to head (batch mode copies a
    table on the way): after a kill anywhere, the next start has the rows and the schema of a clean upgrade."""
    (first,) = ScriptDirectory.from_config(alembic_config("sqlite://")).get_bases()
    seeded = tmp_path / "seeded.db"
    upgrade_sync(_url(seeded), first)
    _seed(seeded)
    clean = tmp_path / "clean.db"
    clean.write_bytes(seeded.read_bytes())
    trace = _trace(clean)
    reference_schema, reference_rows = _schema(clean), _rows(clean)
    assert _version(clean) == [_head()]
    points = _kill_points(trace)

    dbs: dict[tuple[str, int], Path] = {}

    def copy(point: tuple[str, int]) -> Path:
        dbs[point] = tmp_path / f"{point[0]}-{point[1]}.db"
        dbs[point].write_bytes(seeded.read_bytes())
        return dbs[point]

    problems = _run_points(copy, points)
    assert not problems, f"{len(problems)} of {len(points)} kill points broke the next start:\n" + "\n".join(problems)
    for point, db in dbs.items():
        assert _schema(db) == reference_schema, f"{point}: the schema differs from a clean upgrade's"
        assert _rows(db) == reference_rows, f"{point}: rows differ from a clean upgrade's"


def _start(db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), "start", str(db), *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _created(out: str) -> int:
    return json.loads(out.strip().splitlines()[-1])["created"]


def test_a_second_start_waits_for_the_first_ones_migration_then_does_nothing(tmp_path: Path) -> None:
    """The first process stops in the middle of its migration; a second one starts on the same fresh file.
    Both must exit 0: the second waits for the first's migration, finds head and creates nothing."""
    db = tmp_path / "both.db"
    first = _start(db, "--pause", "12")
    assert first.stdout is not None and first.stdin is not None
    assert first.stdout.readline().strip() == "begun"
    assert first.stdout.readline().strip() == "paused", first.stderr.read() if first.stderr else ""
    second = _start(db)
    assert second.stdout is not None
    assert second.stdout.readline().strip() == "begun"  # it is executing its first statement (waiting, when right)
    first.stdin.write("\n")
    first.stdin.flush()
    out1, err1 = first.communicate(timeout=_LIMIT)
    out2, err2 = second.communicate(timeout=_LIMIT)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    assert _created(out1) > 0 and _created(out2) == 0
    assert _version(db) == [_head()]
    clean = tmp_path / "clean.db"
    upgrade_sync(_url(clean))
    assert _schema(db) == _schema(clean)


def test_several_first_starts_at_once_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    procs = [_start(db) for _ in range(4)]
    results = [p.communicate(timeout=_LIMIT) for p in procs]
    for p, (_out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert sum(1 for out, _ in results if _created(out) > 0) == 1
    assert _version(db) == [_head()]
