"""The ``ateams`` command line."""
from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.panel import Panel

from agency.errors import AgencyError
from agency.schemas import OVERSIGHT_LEVELS

app = typer.Typer(help="A-TEAMs: an AI agency in your Discord server, or in your terminal.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
err = Console(stderr=True)
log = logging.getLogger(__name__)


def _settings(**overrides):  # noqa: ANN202
    from agency.settings import load_settings

    try:
        return load_settings(**overrides)
    except AgencyError as e:
        err.print(f"[red]{e.user_message}[/red]")
        raise typer.Exit(2) from None


def _fail(e: AgencyError) -> None:
    err.print(f"[red]{e.user_message}[/red]")
    raise typer.Exit(1)


@app.command()
def run(
    objective: str = typer.Argument(..., help="What the agency should achieve, in a sentence."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Simulate every model call (the default when no model endpoint or key is configured)."),
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Approve every gate automatically (unattended runs)."),
    oversight: Optional[str] = typer.Option(None, help=f"Where to wait for the Director: {', '.join(OVERSIGHT_LEVELS)}."),
    budget: Optional[float] = typer.Option(None, help="Budget in USD; the project pauses when it is spent."),
    out: Path = typer.Option(Path("deliverables"), help="Folder for the deliverable Markdown file."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the database and memory live (default: .ateams)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the progress and the result."),
) -> None:
    """Run a whole project in the terminal and write the deliverable to a Markdown file."""
    from agency.logs import configure_logging

    overrides = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if dry_run:
        overrides["dry_run"] = True
    settings = _settings(**overrides)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    if oversight is not None and oversight not in OVERSIGHT_LEVELS:
        err.print(f"[red]--oversight must be one of {', '.join(OVERSIGHT_LEVELS)}, not {oversight!r}.[/red]")
        raise typer.Exit(2)
    try:
        code = asyncio.run(_run(settings, objective, oversight or settings.engine.default_oversight, auto_approve, out, budget, quiet))
    except AgencyError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("Interrupted; the project is saved and resumes on the next start.")
        raise typer.Exit(130) from None
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
    data_dir: Optional[Path] = typer.Option(None, help="Where the database and memory live (default: .ateams)."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the progress and the result."),
) -> None:
    """Follow an unfinished project (after Ctrl-C, SIGTERM or a crash) to its end in the terminal."""
    from agency.logs import configure_logging

    settings = _settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    try:
        code = asyncio.run(_run(settings, None, settings.engine.default_oversight, auto_approve, out, None, quiet, project_id=project))
    except AgencyError as e:
        _fail(e)
    raise typer.Exit(code)


async def _run(settings, objective, oversight, auto_approve, out, budget, quiet, project_id=None) -> int:  # noqa: ANN001
    from agency.console import ConsoleChat, run_console_project
    from agency.service import AgencyService
    from agency.wiring import build_service

    con = Console()
    chat = ConsoleChat(console=con, quiet=quiet)
    service: AgencyService = await build_service(settings, chat)
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
        con.print(f"[bold green]Project #{pid} {status}.[/bold green] Deliverable: {path}", soft_wrap=True)
        return 0
    con.print(f"[bold red]Project #{pid} ended {status}[/bold red] without a deliverable.")
    return 1


@app.command()
def bot() -> None:
    """Run the Discord bot (needs DISCORD_TOKEN in the environment)."""
    settings = _settings()
    from bot.__main__ import main as bot_main

    sys.exit(bot_main(settings))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the database migrations (SQLite upgrades itself at start)."""
    from agency.db.session import upgrade_sync

    settings = _settings()
    try:
        upgrade_sync(settings.db_url, revision)
    except Exception as e:  # a bad URL, an unreachable server, a read-only folder
        err.print(f"[red]Could not upgrade the database: {type(e).__name__}: {str(e).splitlines()[0]}[/red]\n"
                  "Check `database_url` / `data_dir` in config.toml (or ATEAMS_DATABASE_URL / ATEAMS_DATA_DIR).")
        raise typer.Exit(1) from None
    Console().print(f"Database at {settings.db_url.split('///')[-1] if settings.db_url.startswith('sqlite') else '(configured URL)'} is at {revision}.", soft_wrap=True)


# -- observability: model report, cost, audit, replay (agency.reports, agency.audit, agency.llm.replay) --------
models_app = typer.Typer(help="Model routing: how each tier does, from the recorded calls.", no_args_is_help=True)
app.add_typer(models_app, name="models")


_DATA_DIR_HELP = "Where the database lives (default: .ateams, or data_dir in config.toml)."


def _settings_at(data_dir: Optional[Path]):  # noqa: ANN202
    return _settings(**({"data_dir": data_dir} if data_dir is not None else {}))


@asynccontextmanager
async def _open_db(settings):  # noqa: ANN001, ANN202
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
    project: Optional[int] = typer.Option(None, help="Only this project (default: every recorded call)."),
    data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
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

    asyncio.run(go())


@app.command()
def cost(
    project: int = typer.Argument(..., help="Project id."),
    data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Tokens and cost of a project by stream, member, model and role (orchestration included)."""
    from agency.db.tables import ProjectRow
    from agency.reports import cost_tables, project_costs, render_costs

    settings = _settings_at(data_dir)

    async def go() -> int:
        async with _open_db(settings) as db, db.session() as s:
            if await s.get(ProjectRow, project) is None:
                err.print(f"[red]There is no project #{project}.[/red]")
                return 1
            b = await project_costs(s, project)
        con = Console()
        for t in cost_tables(b):
            con.print(t)
        con.print(render_costs(b))
        return 0

    raise typer.Exit(asyncio.run(go()))


@app.command()
def audit(
    project: int = typer.Argument(..., help="Project id."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file (default: standard output)."),
    data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
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

    try:
        n = asyncio.run(go())
    except AgencyError as e:
        _fail(e)
    if out is not None:
        err.print(f"{n} records written to {out}")


@app.command()
def replay(
    project: int = typer.Argument(..., help="Project id."),
    timeout: float = typer.Option(300.0, help="Give up after this many seconds."),
    data_dir: Optional[Path] = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Re-run a recorded project with answers from its record; report the first divergence."""
    from agency.llm.replay import replay_project
    from agency.logs import configure_logging

    settings = _settings_at(data_dir)
    configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    try:
        result = asyncio.run(replay_project(settings, settings.db_url, project, timeout=timeout))
    except AgencyError as e:
        _fail(e)
    con = Console()
    con.print(result.render(), style="green" if result.ok else "red")
    for d in result.divergences[1:10]:
        con.print(f"  - {d}", style="dim")
    raise typer.Exit(0 if result.ok else 1)


def main() -> None:  # pragma: no cover
    app()
