"""The ``ateams`` command line.

Every failure a user can cause (a bad option, an unknown project, a settings
file that cannot be read, a database URL or folder that cannot be used, a
damaged database) ends with one message saying what is wrong and what to do,
and a non-zero exit status: 2 for a bad invocation or setting, 1 for a command
that could not be done. No traceback is shown; ``ATEAMS_LOG_LEVEL=DEBUG`` logs
one for an unexpected error.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from agency.errors import AgencyError, NotFoundError
from agency.schemas import OVERSIGHT_LEVELS

app = typer.Typer(help="A-TEAMs: an AI agency in your Discord server, or in your terminal.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
err = Console(stderr=True)
log = logging.getLogger(__name__)

_DATA_DIR_FIX = "Choose a folder you can write to with --data-dir (or ATEAMS_DATA_DIR, or data_dir in config.toml)."


def _say_error(message: str, fix: str = "") -> None:
    err.print(f"[red]{escape(message)}[/red]" + (f" {escape(fix)}" if fix else ""), soft_wrap=True)


def _stop(message: str, fix: str = "", *, code: int = 1) -> NoReturn:
    _say_error(message, fix)
    raise typer.Exit(code)


def _config_path() -> Path:
    return Path(os.environ.get("ATEAMS_CONFIG", "config.toml"))


def _settings(**overrides):
    from agency.settings import load_settings

    path = _config_path()
    if path.exists() and not path.is_file():
        _stop(f"The settings file {path} is a folder, not a file.",
              "Point ATEAMS_CONFIG at a TOML file (see config.example.toml), or unset it.", code=2)
    try:
        return load_settings(**overrides)
    except AgencyError as e:
        _stop(e.user_message, code=2)
    except OSError as e:
        _stop(f"Cannot read the settings file {path}: {e.strerror or e}.",
              "Make it readable, or point ATEAMS_CONFIG at another TOML file (see config.example.toml).", code=2)
    except UnicodeDecodeError:
        _stop(f"The settings file {path} is not UTF-8 text.", "Save it as UTF-8 TOML (see config.example.toml).", code=2)


def _fail(e: AgencyError, fix: str = "") -> NoReturn:
    _stop(e.user_message, fix)


def _db_where(url: str) -> str:
    """The database for a message: the file of an SQLite URL, else the URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        u = make_url(url)
        if u.get_backend_name() == "sqlite":
            return u.database or ":memory:"
        return u.render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(the configured database URL)"


def _explain(e: BaseException, settings: Any) -> tuple[str, str]:
    """(what went wrong, what to do) for an exception no command handles itself."""
    from sqlalchemy import exc as sa

    url = getattr(settings, "db_url", "") if settings is not None else ""
    where = _db_where(url) if url else "the database"
    fix_url = "Check database_url in config.toml (or ATEAMS_DATABASE_URL), e.g. sqlite+aiosqlite:///.ateams/ateams.db."
    if isinstance(e, (sa.NoSuchModuleError, sa.ArgumentError)):
        return f"The database URL cannot be used: {str(e).splitlines()[0]}.", fix_url
    if isinstance(e, ModuleNotFoundError):
        return (f"The Python module {e.name!r} is not installed (the configured database needs it).",
                f"Install it (pip install {e.name}) or change the database URL. {fix_url}")
    if isinstance(e, sa.DBAPIError):
        reason = str(e.orig).splitlines()[0] if e.orig is not None else str(e).splitlines()[0]
        low = reason.lower()
        if "not a database" in low or "malformed" in low or "file is encrypted" in low:
            return (f"{where} is not an A-TEAMs database, or it is damaged ({reason}).",
                    "Restore it from a backup, or use another folder with --data-dir (or ATEAMS_DATA_DIR).")
        if "unable to open" in low or "readonly" in low or "read-only" in low:
            return f"Cannot open the database {where} for writing ({reason}).", _DATA_DIR_FIX
        return f"The database {where} failed: {reason}.", fix_url
    if isinstance(e, OSError):
        name = e.filename or ""
        return (f"Cannot use {name}: {e.strerror or e}." if name else f"A file operation failed: {e}.",
                "Check the folders given with --data-dir and --out (or ATEAMS_DATA_DIR): they must be folders you can write to.")
    first = (str(e).splitlines() or [""])[0]
    return (f"Unexpected error: {type(e).__name__}: {first}".rstrip(": ") + ".",
            "Run again with ATEAMS_LOG_LEVEL=DEBUG to log the details, and report it if it persists.")


@contextmanager
def _guard(settings: Any = None, *, not_found: str = "") -> Iterator[None]:
    """Turn every failure of a command into a message and an exit status (never a traceback)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except NotFoundError as e:
        _fail(e, not_found)
    except AgencyError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("Interrupted; the project is saved and resumes on the next start.")
        raise typer.Exit(130) from None
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):
            raise
        log.debug("command failed", exc_info=True)
        message, fix = _explain(e, settings)
        _stop(message, fix)


def _writable_dir(path: Path, what: str, fix: str) -> None:
    """Make ``path`` (and its parents) and check a file can be written there; else stop with ``fix``."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        _stop(f"Cannot use {path} as {what}: {blocker} is a file, not a folder.", fix, code=2)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        _stop(f"Cannot use {path} as {what}: {e.strerror or e}.", fix, code=2)


def _existing_database(settings: Any, fix: str = "") -> None:
    """Commands that read what earlier runs left: stop if an SQLite database file is not there (never make one)."""
    from sqlalchemy.engine import make_url

    with _guard(settings):
        url = make_url(settings.db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database)
    if not path.is_file():
        _stop(f"There is no database at {path}: nothing has run with this data folder yet.",
              fix or "Point --data-dir (or ATEAMS_DATA_DIR) at the folder of your earlier runs.")


def _not_found_fix(settings: Any) -> str:
    return (f"Projects are numbered from 1 in each data folder; this is {settings.data_dir}. "
            "Check the number, or point --data-dir (or ATEAMS_DATA_DIR) at another folder.")


def _check_request(objective: str, oversight: str, budget: float | None) -> None:
    """The project request, checked before anything starts (the same rules the service applies)."""
    from pydantic import ValidationError

    from agency.schemas import ProjectRequest

    if budget is not None and not (math.isfinite(budget) and budget > 0):
        _stop(f"--budget must be a positive number of US dollars, not {budget:g}.", "For example --budget 2.50.", code=2)
    try:
        ProjectRequest.model_validate({"objective": objective.strip(), "oversight": oversight, "budget_usd": budget})
    except ValidationError as e:
        for problem in e.errors():
            field = problem["loc"][0] if problem["loc"] else ""
            msg = str(problem["msg"]).removeprefix("Value error, ")
            if field == "objective":
                kind = problem["type"]
                what = ("is empty" if not objective.strip() else
                        "is too short" if kind == "string_too_short" else
                        "is too long (at most 4000 characters)" if kind == "string_too_long" else
                        "is not a sentence")
                _stop(f"The objective {what}.", 'Describe what the agency should achieve in a sentence of a few words, '
                      'e.g. ateams run "Write a one-page brief on rainwater harvesting".', code=2)
            _stop(f"Cannot start the project: {field}: {msg}.", code=2)


@app.command()
def run(
    objective: str = typer.Argument(..., help="What the agency should achieve, in a sentence."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Simulate every model call (the default when no model endpoint or key is configured)."),
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Approve every gate automatically (unattended runs)."),
    oversight: str | None = typer.Option(None, help=f"Where to wait for the Director: {', '.join(OVERSIGHT_LEVELS)}."),
    budget: float | None = typer.Option(None, help="Budget in USD; the project pauses when it is spent."),
    out: Path = typer.Option(Path("deliverables"), help="Folder for the deliverable Markdown file."),
    data_dir: Path | None = typer.Option(None, help="Where the database and memory live (default: .ateams)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the progress and the result."),
) -> None:
    """Run a whole project in the terminal and write the deliverable to a Markdown file."""
    from agency.logs import configure_logging

    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if dry_run:
        overrides["dry_run"] = True
    settings = _settings(**overrides)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if oversight is not None and oversight not in OVERSIGHT_LEVELS:
        _stop(f"--oversight must be one of {', '.join(OVERSIGHT_LEVELS)}, not {oversight!r}.", code=2)
    oversight = oversight or settings.engine.default_oversight
    _check_request(objective, oversight, budget)
    _writable_dir(Path(settings.data_dir), "the data folder", _DATA_DIR_FIX)
    _writable_dir(out, "the deliverables folder", "Choose a folder you can write to with --out.")
    with _guard(settings):
        code = asyncio.run(_run(settings, objective.strip(), oversight, auto_approve, out, budget, quiet))
    raise typer.Exit(code)


def _stop_on_signals(stopped: list[int]) -> None:
    """SIGTERM/SIGINT cancel the main task, so ``service.close()`` runs: the engine stops scheduling
    (committed state stands) and the outbox is drained. A second signal while stopping is ignored."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def handler(sig: int) -> None:
        if stopped:
            err.print("Already stopping: finishing the writes in progress.")
            return
        stopped.append(sig)
        if task is not None:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, or not the main thread
            pass


@app.command()
def resume(
    project: int = typer.Argument(..., help="The project number, e.g. 3."),
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Approve every gate automatically."),
    out: Path = typer.Option(Path("deliverables"), help="Folder for the deliverable Markdown file."),
    data_dir: Path | None = typer.Option(None, help="Where the database and memory live (default: .ateams)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the progress and the result."),
) -> None:
    """Follow an unfinished project (after Ctrl-C, SIGTERM or a crash) to its end in the terminal."""
    from agency.logs import configure_logging

    settings = _settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if project < 1:
        _stop(f"There is no project #{project}.", _not_found_fix(settings), code=2)
    _existing_database(settings)
    _writable_dir(Path(settings.data_dir), "the data folder", _DATA_DIR_FIX)
    _writable_dir(out, "the deliverables folder", "Choose a folder you can write to with --out.")
    with _guard(settings, not_found=_not_found_fix(settings)):
        code = asyncio.run(_run(settings, None, settings.engine.default_oversight, auto_approve, out, None, quiet, project_id=project))
    raise typer.Exit(code)


async def _run(settings, objective, oversight, auto_approve, out, budget, quiet, project_id=None) -> int:
    from agency.console import ConsoleChat, run_console_project
    from agency.service import AgencyService
    from agency.wiring import build_service

    con = Console()
    chat = ConsoleChat(console=con, quiet=quiet)
    service: AgencyService = await build_service(settings, chat)
    if project_id is not None:
        try:
            await service.project(project_id)  # an unknown number stops here, before anything is printed
        except BaseException:
            await service.close()
            raise
    from agency.wiring import tune_gc

    tune_gc()
    if service.llm.simulated:
        con.print(Panel("DRY RUN: no model endpoint or key is configured (or --dry-run was given).\n"
                        "Every role is played by a simulator; no model is called and nothing is paid. "
                        "The orchestration, database, memory and deliverable are real.", style="yellow"))
    stopped: list[int] = []
    closed = False
    _stop_on_signals(stopped)
    try:
        pid, status, path = await run_console_project(service, chat, objective, oversight=oversight, auto_approve=auto_approve,
                                                      out_dir=out, budget_usd=budget, project_id=project_id)
    except asyncio.CancelledError:
        if not stopped:
            raise
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        closed = True
        await service.close()  # graceful: stop scheduling, finish writes, drain the outbox
        import signal

        name = signal.Signals(stopped[0]).name
        err.print(f"Stopped by {name}: the project is saved; continue it with `ateams resume <project>` "
                  "(it also resumes whenever the agency starts with this data directory).")
        return 128 + stopped[0]
    finally:
        if not closed:
            await service.close()
    if path is not None:
        con.print(f"[bold green]Project #{pid} {status}.[/bold green] Deliverable: {escape(str(path))}", soft_wrap=True)
        return 0
    con.print(f"[bold red]Project #{pid} ended {status}[/bold red] without a deliverable.")
    return 1


@app.command()
def bot() -> None:
    """Run the Discord bot (needs DISCORD_TOKEN in the environment)."""
    settings = _settings()
    _writable_dir(Path(settings.data_dir), "the data folder", _DATA_DIR_FIX)
    with _guard(settings):
        from bot.__main__ import main as bot_main

        code = bot_main(settings)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the database migrations (SQLite upgrades itself at start)."""
    from agency.db.session import upgrade_sync

    settings = _settings()
    try:
        upgrade_sync(settings.db_url, revision)
    except Exception as e:  # a bad URL, an unreachable server, a read-only folder, a damaged file, an unknown revision
        log.debug("upgrade failed", exc_info=True)
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        _stop(f"Could not upgrade the database {_db_where(settings.db_url)}: {reason}",
              "Check database_url / data_dir in config.toml (or ATEAMS_DATABASE_URL / ATEAMS_DATA_DIR)"
              + (", and the revision (default: head)." if revision != "head" else "."))
    Console().print(f"Database at {settings.db_url.split('///')[-1] if settings.db_url.startswith('sqlite') else '(configured URL)'} is at {revision}.", soft_wrap=True)


# -- observability: model report, cost, audit, replay (agency.reports, agency.audit, agency.llm.replay) --------
models_app = typer.Typer(help="Model routing: how each tier does, from the recorded calls.", no_args_is_help=True)
app.add_typer(models_app, name="models")


_DATA_DIR_HELP = "Where the database lives (default: .ateams, or data_dir in config.toml)."


def _settings_at(data_dir: Path | None):
    return _settings(**({"data_dir": data_dir} if data_dir is not None else {}))


@asynccontextmanager
async def _open_db(settings):
    """The agency's database, upgraded, closed on the way out."""
    from agency.db.session import Database

    db = Database.from_settings(settings)
    try:
        await db.upgrade()
        yield db
    finally:
        await db.dispose()


@models_app.command("report")
def models_report(
    project: int | None = typer.Option(None, help="Only this project (default: every recorded call)."),
    data_dir: Path | None = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Acceptance rate, tokens and cost per tier, model and task kind, to tune the routing thresholds."""
    from agency.reports import model_report, model_report_table

    settings = _settings_at(data_dir)

    async def go() -> None:
        async with _open_db(settings) as db, db.session() as s:
            rows = await model_report(s, project_id=project, weights=settings.routing.weights)
        con = Console()
        con = con if con.is_terminal else Console(width=160)
        con.print(model_report_table(rows, title="Model routing report" + (f" - project #{project}" if project else "")))
        th = ", ".join(f"{k} >= {v}" for k, v in settings.routing.thresholds.items())
        con.print(f"Thresholds: {th or 'none'} (weighted score 1-5); escalation after {settings.routing.escalate_after_revisions} revisions.")

    _existing_database(settings)
    with _guard(settings):
        asyncio.run(go())


@app.command()
def cost(
    project: int = typer.Argument(..., help="Project id."),
    data_dir: Path | None = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Tokens and cost of a project by stream, member, model and role (orchestration included)."""
    from agency.db.tables import ProjectRow
    from agency.reports import cost_tables, project_costs, render_costs

    settings = _settings_at(data_dir)

    async def go() -> int:
        async with _open_db(settings) as db, db.session() as s:
            if await s.get(ProjectRow, project) is None:
                raise NotFoundError(f"There is no project #{project}.")
            b = await project_costs(s, project)
        con = Console()
        for t in cost_tables(b):
            con.print(t)
        con.print(render_costs(b))
        return 0

    _existing_database(settings)
    with _guard(settings, not_found=_not_found_fix(settings)):
        code = asyncio.run(go())
    raise typer.Exit(code)


@app.command()
def audit(
    project: int = typer.Argument(..., help="Project id."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file (default: standard output)."),
    data_dir: Path | None = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Export a project's events, messages and LLM calls as JSON Lines (secrets redacted)."""
    from agency.audit import write_audit

    settings = _settings_at(data_dir)

    async def go() -> int:
        async with _open_db(settings) as db:
            if out is None:
                return await write_audit(db, project, sys.stdout)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8") as fh:
                return await write_audit(db, project, fh)

    _existing_database(settings)
    if out is not None:
        if out.exists() and not out.is_file():
            _stop(f"--out {out} is a folder.", "Give the path of a file to write, e.g. --out audit.jsonl.", code=2)
        _writable_dir(out.parent, "the folder of --out", "Choose a file in a folder you can write to with --out.")
    with _guard(settings, not_found=_not_found_fix(settings)):
        n = asyncio.run(go())
    if out is not None:
        err.print(f"{n} records written to {out}")


@app.command()
def replay(
    project: int = typer.Argument(..., help="Project id."),
    timeout: float = typer.Option(300.0, help="Give up after this many seconds."),
    data_dir: Path | None = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Re-run a recorded project with answers from its record; report the first divergence."""
    from agency.llm.replay import replay_project
    from agency.logs import configure_logging

    settings = _settings_at(data_dir)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if not (math.isfinite(timeout) and timeout > 0):
        _stop(f"--timeout must be a positive number of seconds, not {timeout:g}.", code=2)
    _existing_database(settings)
    with _guard(settings, not_found=_not_found_fix(settings)):
        result = asyncio.run(replay_project(settings, settings.db_url, project, timeout=timeout))
    con = Console()
    con.print(result.render(), style="green" if result.ok else "red")
    for d in result.divergences[1:10]:
        con.print(f"  - {d}", style="dim")
    raise typer.Exit(0 if result.ok else 1)


def main() -> None:  # pragma: no cover
    app()
