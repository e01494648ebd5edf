"""The chat port in the terminal: a whole project runs, and is seen, offline.

Messages are printed grouped by channel and thread with each persona's name;
the live status message becomes a progress line; approvals are answered by
the Director at a prompt (or automatically with ``--auto-approve``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import func, select

from agency.db.tables import LLMCallRow
from agency.llm.simulated import NOTICE
from agency.llm.usage import format_usd
from agency.models import TERMINAL, Actor
from agency.ports import OutboundMessage, SpaceSpec

log = logging.getLogger(__name__)
CONSOLE_AGENCY = "console"
DIRECTOR = Actor(name="Director", external_user_id="console-director", is_director=True)


@dataclass
class ConsoleChat:
    """ChatPort for the terminal. Keeps everything it delivered (tests read it)."""

    console: Console = field(default_factory=Console)
    quiet: bool = False
    sent: list[OutboundMessage] = field(default_factory=list)
    edits: list[tuple[str, OutboundMessage]] = field(default_factory=list)
    spaces: dict[str, SpaceSpec] = field(default_factory=dict)
    approvals: asyncio.Queue[OutboundMessage] = field(default_factory=asyncio.Queue)
    _last_space: str | None = None

    async def ensure_space(self, space: SpaceSpec) -> str:
        self.spaces[space.address] = space
        return space.address

    def _label(self, address: str) -> str:
        sp = self.spaces.get(address)
        if sp is None:
            return address
        if sp.kind == "thread" and sp.parent in self.spaces:
            return f"#{self.spaces[sp.parent].name} > {sp.name}"
        return f"#{sp.name}"

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        self.sent.append(message)
        if message.kind == "approval":
            self.approvals.put_nowait(message)
        if not self.quiet:
            self._print(message, space_external_id)
        return f"console-{message.id}"

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        self.edits.append((external_id, message))
        if not self.quiet and message.kind == "status":
            self._progress(message.content)
        return external_id

    def _print(self, m: OutboundMessage, space: str) -> None:
        if m.kind == "status":
            self._progress(m.content)
            return
        if space != self._last_space:
            self.console.rule(f"[bold]{escape(self._label(space))}", style="dim")
            self._last_space = space
        style = {"approval": "bold yellow", "notice": "magenta", "deliverable": "bold green", "action": "cyan"}.get(m.kind, "")
        text = m.content if len(m.content) < 1500 else m.content[:1500] + f"\n... ({len(m.content)} characters)"
        self.console.print(f"[bold]{escape(m.persona)}[/bold]: " + (f"[{style}]" if style else "") + escape(text) + (f"[/{style}]" if style else ""))
        if m.attachment_name:
            self.console.print(f"  [green]attached: {escape(m.attachment_name)}[/green]")

    def _progress(self, content: str) -> None:
        first = content.splitlines()[0] if content else ""
        spend = next((ln for ln in content.splitlines() if ln.startswith("Spend:")), "")
        running = next((ln for ln in content.splitlines() if ln.startswith("Running:")), "")
        dry = " [dry run]" if NOTICE in content else ""
        self.console.print(f"[dim]>> {escape(re.sub(r'[*]', '', first))}{dry} | {escape(spend)}{' | ' + escape(running) if running else ''}[/dim]")


class _StdinReader:
    """Reads lines on a daemon thread so the event loop never blocks and exit never hangs."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        # os.read, not input(): a thread blocked in input() holds stdin's buffer lock, and the interpreter
        # then aborts at exit ("could not acquire lock for <stdin> at interpreter shutdown")
        buf = b""
        while True:
            try:
                chunk = os.read(0, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                if buf.strip():
                    self.lines.put(buf.decode(errors="replace").rstrip("\r"))
                self.lines.put(None)
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.put(line.decode(errors="replace").rstrip("\r"))

    async def readline(self) -> str | None:
        while True:
            try:
                return self.lines.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.1)


async def run_console_project(service, chat: ConsoleChat, objective: str | None, *, oversight: str, auto_approve: bool,
                              out_dir: Path, budget_usd: float | None = None, project_id: int | None = None) -> tuple[int, str, Path | None]:
    """Run one project (a new one, or ``project_id`` resumed) to its end in the terminal.

    Returns (project id, final status, deliverable path)."""
    con = chat.console
    await service.ensure_agency(CONSOLE_AGENCY, "Terminal agency")
    if project_id is not None:
        info = await service.project(project_id)  # NotFoundError names the project
        objective = info.objective
        await service.start()
        if info.status in ("paused", "blocked"):
            con.print(escape(await service.resume(project_id, DIRECTOR)))
        con.print(f"[dim]Following project #{project_id} ({escape(info.status)}).[/dim]")
    else:
        await service.start()
        info = await service.new_project(CONSOLE_AGENCY, objective or "", oversight=oversight, budget_usd=budget_usd, actor=DIRECTOR)
    pid = info.id
    reader = None if auto_approve else _StdinReader()
    deferred: list[str] = []
    if reader is not None:
        con.print("[dim]You are the Director. Type /approve, /approve N, /reject <reason>, /project status, /project cancel, "
                  "or a message to the PM at any time.[/dim]")
    while True:
        status = (await service.project(pid)).status
        if status in TERMINAL:
            break
        if status == "blocked" and auto_approve:
            con.print(f"[red]Project #{pid} is blocked: {escape((await service.project(pid)).error or '')}[/red]\n"
                      f"Fix the cause, then `ateams resume {pid}`.", soft_wrap=True)
            break
        if status == "paused" and reader is None and not deferred:
            con.print(f"[yellow]Project #{pid} is paused; continue it with `ateams resume {pid}`.[/yellow]", soft_wrap=True)
            break
        try:
            appr = chat.approvals.get_nowait()
        except asyncio.QueueEmpty:
            appr = None
        if appr is not None and auto_approve:
            try:
                await service.decide(appr.approval_id, True, DIRECTOR)
                con.print(f"[yellow]Director (auto-approve): approved #{appr.approval_id}[/yellow]")
            except Exception as e:  # already decided, project ended
                con.print(f"[dim]{escape(getattr(e, 'user_message', str(e)))}[/dim]")
            continue
        if reader is not None or deferred:
            line: str | None = ""
            pending = await service.engine.pending_approval(pid)
            if deferred and pending is not None:
                line = deferred.pop(0)  # answers typed ahead are used for the gates in order
            elif reader is not None:
                try:
                    line = reader.lines.get_nowait()
                except queue.Empty:
                    line = ""
            if line is None:
                reader = None
                if not deferred:
                    auto_approve = True
                    con.print("[dim]Input closed; approving automatically from now on.[/dim]")
                continue
            if line.strip():
                text = line.strip()
                if text.split()[0].lower() in ("/approve", "/reject") and pending is None:
                    deferred.append(text)
                    continue
                try:
                    result = await service.handle_message(CONSOLE_AGENCY, f"overview:{pid}", DIRECTOR, text)
                    if result is not None:
                        con.print(f"[yellow]{escape(result.text)}[/yellow]")
                except Exception as e:
                    con.print(f"[red]{escape(getattr(e, 'user_message', str(e)))}[/red]")
                continue
            if reader is None and not deferred and not auto_approve:
                auto_approve = True
                con.print("[dim]Input closed; approving automatically from now on.[/dim]")
        await asyncio.sleep(0.05)
    if (await service.project(pid)).status in TERMINAL:  # let the after-delivery hooks (memory, learning) finish
        await asyncio.wait_for(service.engine.wait_project(pid), 600)
    await service.dispatcher.drain()
    if auto_approve:  # gates raised after delivery (the Learning Manager's system-message revisions)
        while not chat.approvals.empty():
            appr = chat.approvals.get_nowait()
            try:
                result = await service.decide(appr.approval_id, True, DIRECTOR)
                con.print(f"[yellow]Director (auto-approve): {escape(result)}[/yellow]")
            except Exception as e:  # already decided or superseded
                log.debug("auto-approve of %s skipped: %s", appr.approval_id, e)
        await service.dispatcher.drain()
    final = await service.project(pid)
    path: Path | None = None
    md = await service.deliverable(pid)
    if md:
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", (objective or "").lower()).strip("-")[:40] or "deliverable"
        path = out_dir / f"project-{pid}-{slug}.md"
        path.write_text(md, encoding="utf-8")
    await cost_report(service, pid, con)
    return pid, final.status, path


async def cost_report(service, pid: int, con: Console) -> None:
    async with service.db.session() as s:
        rows = (await s.execute(
            select(LLMCallRow.role, func.count(LLMCallRow.id), func.sum(LLMCallRow.prompt_tokens), func.sum(LLMCallRow.completion_tokens),
                   func.sum(LLMCallRow.cost_usd), func.max(LLMCallRow.simulated))
            .where(LLMCallRow.project_id == pid).group_by(LLMCallRow.role).order_by(LLMCallRow.role))).all()
    simulated = any(r[5] for r in rows)
    title = "What a real run would cost (at the configured prices)" if simulated else "Model usage"
    table = Table(title=title)
    for col in ("role", "calls", "prompt tokens", "completion tokens", "cost"):
        table.add_column(col, justify="right" if col != "role" else "left")
    tot = [0, 0, 0, 0.0]
    for role, calls, pt, ct, cost, _ in rows:
        table.add_row(role, str(calls), str(pt or 0), str(ct or 0), format_usd(cost or 0.0))
        tot = [tot[0] + calls, tot[1] + (pt or 0), tot[2] + (ct or 0), tot[3] + (cost or 0.0)]
    table.add_row("[bold]total", str(tot[0]), str(tot[1]), str(tot[2]), format_usd(tot[3]))
    con.print(table)
    if simulated:
        con.print(Panel(escape(f"{NOTICE}\nEvery message above was simulated to exercise the orchestration. "
                        "Set OPENAI_API_KEY (or [llm] base_url for a self-hosted server) to run with a real model."), style="yellow"))
