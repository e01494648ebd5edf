"""The ``ateams`` command line."""
from __future__ import annotations

import asyncio
import logging
import sys
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


async def _run(settings, objective, oversight, auto_approve, out, budget, quiet) -> int:  # noqa: ANN001
    from agency.console import ConsoleChat, run_console_project
    from agency.service import AgencyService
    from agency.wiring import build_service

    con = Console()
    chat = ConsoleChat(console=con, quiet=quiet)
    service: AgencyService = await build_service(settings, chat)
    if service.llm.simulated:
        con.print(Panel("DRY RUN: no model endpoint or key is configured (or --dry-run was given).\n"
                        "Every role is played by a simulator; no model is called and nothing is paid. "
                        "The orchestration, database, memory and deliverable are real.", style="yellow"))
    try:
        pid, status, path = await run_console_project(service, chat, objective, oversight=oversight, auto_approve=auto_approve,
                                                      out_dir=out, budget_usd=budget)
    finally:
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


def main() -> None:  # pragma: no cover
    app()
