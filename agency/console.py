"""The chat port in the terminal: a whole project runs, and is seen, offline.

Messages are printed grouped by channel and thread with each persona's name;
the live status message becomes a progress line; approvals are answered by
the Director at a prompt (or automatically with ``--auto-approve``).

Two promises of the chat port hold in the terminal too:

- **Nothing is shown twice after a crash.** The outbox marks a message
  delivered after the adapter returns; a crash in between makes it send the
  row again with the same nonce. The console keeps the nonces it has shown in
  an append-only file in the data folder (:class:`ShownLog`), written right
  after the message is printed and flushed: a resend of a nonce in the file is
  not printed again. The file's first line names the database it belongs to
  (the console agency's id and creation time), so a new database in the same
  folder starts a new file instead of hiding its messages.
- **Model text cannot drive the terminal.** Every text read back from the
  database (content, personas, names, status, errors) goes through
  :func:`agency.terminal_text.clean` (no escape or control sequences), is
  rendered as a rich ``Text`` (no markup, no emoji codes) or with
  :func:`rich.markup.escape`, and every line of a message after its first is
  indented under the speaker's name, so a model cannot start a line that looks
  like another speaker's (``Director: ...``).

A gate that is still pending when a project is followed again (``ateams
resume``) is shown again from the messages table, and answered when
``--auto-approve`` is on, whether or not its message went out before the stop.
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
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from agency.db.tables import AgencyRow, ApprovalRow, LLMCallRow, MessageRow, SpaceRow
from agency.llm.simulated import NOTICE
from agency.llm.usage import format_usd
from agency.models import TERMINAL, Actor
from agency.ports import OutboundMessage, SpaceSpec
from agency.terminal_text import clean, clean_line

log = logging.getLogger(__name__)
CONSOLE_AGENCY = "console"
DIRECTOR = Actor(name="Director", external_user_id="console-director", is_director=True, agency=CONSOLE_AGENCY)
SHOWN_LOG = "console-shown.log"  # in the data folder: the nonces of the messages this terminal has shown
_MAX_PERSONA = 32
_MAX_TEXT = 1500
_STYLES = {"approval": "bold yellow", "notice": "magenta", "deliverable": "bold green", "action": "cyan"}


class ShownLog:
    """The nonces of the messages shown in this terminal, durable across a crash of the process.

    One nonce per line, appended with a single ``os.write`` to a file opened
    with ``O_APPEND`` after the message is printed: once ``write`` returns the
    line is the kernel's, so a killed process loses nothing (a power cut also
    clears the screen it was shown on). The first line names the database; a
    file of another database is started afresh. Only the window between the
    print and the ``write`` (no await in between) can still show a message
    twice.
    """

    def __init__(self, path: Path, database: str) -> None:
        self.path = path
        header = f"# shown messages of database {clean_line(database)}"
        self._seen: set[str] = set()
        lines: list[str] = []
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            pass
        if lines and lines[0] == header:
            self._seen = {ln for ln in lines[1:] if ln}
        else:  # a new file, or one of another database: start afresh, atomically
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(header + "\n", encoding="utf-8")
            os.replace(tmp, path)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._seen

    def add(self, nonce: str) -> None:
        if not nonce or "\n" in nonce or nonce in self._seen:
            return
        self._seen.add(nonce)
        if self._fd is not None:
            os.write(self._fd, (nonce + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class ConsoleChat:
    """ChatPort for the terminal. Keeps everything it delivered (tests read it)."""

    console: Console = field(default_factory=Console)
    quiet: bool = False
    sent: list[OutboundMessage] = field(default_factory=list)
    edits: list[tuple[str, OutboundMessage]] = field(default_factory=list)
    spaces: dict[str, SpaceSpec] = field(default_factory=dict)
    approvals: asyncio.Queue[OutboundMessage] = field(default_factory=asyncio.Queue)
    shown: ShownLog | None = None  # set by run_console_project: nonces shown before (by this or an earlier process)
    gates_seen: set[int] = field(default_factory=set)  # approval ids the Director has seen in this process
    _queued: set[int] = field(default_factory=set)  # approval ids offered to the auto-approver
    _last_space: str | None = None

    async def ensure_space(self, space: SpaceSpec) -> str:
        self.spaces[space.address] = space
        return space.address

    def _label(self, address: str) -> str:
        sp = self.spaces.get(address)
        if sp is None:
            return clean_line(address)
        if sp.kind == "thread" and sp.parent in self.spaces:
            return f"#{clean_line(self.spaces[sp.parent].name)} > {clean_line(sp.name)}"
        return f"#{clean_line(sp.name)}"

    def _offer(self, message: OutboundMessage) -> None:
        if message.approval_id is not None and message.approval_id not in self._queued:
            self._queued.add(message.approval_id)
            self.approvals.put_nowait(message)

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        self.sent.append(message)
        if message.kind == "approval":
            self._offer(message)
        if self.quiet:
            return f"console-{message.id}"
        if message.kind == "status":
            self._progress(message.content)
        elif self.shown is not None and message.nonce and message.nonce in self.shown:
            # a resend after a crash of a message already on the screen: not again; but a gate (still waiting:
            # this is the first delivery after the restart) is shown again, marked as asked before the stop
            if message.kind == "approval" and message.approval_id not in self.gates_seen:
                self.remind(message)
            else:
                log.info("message %s was shown before the restart; not printed again", message.id)
        elif message.kind == "approval" and message.approval_id in self.gates_seen:
            log.info("gate %s was shown again already; its message is not printed twice", message.approval_id)
        else:
            self._print(message, space_external_id)
            if message.approval_id is not None:
                self.gates_seen.add(message.approval_id)
            if self.shown is not None:
                self.shown.add(message.nonce)  # after the print: rich has flushed it to the terminal
        return f"console-{message.id}"

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        self.edits.append((external_id, message))
        if not self.quiet and message.kind == "status":
            self._progress(message.content)
        return external_id

    def remind(self, message: OutboundMessage) -> None:
        """Show again a gate that is still waiting for the Director (asked before a stop) and offer it."""
        if message.approval_id is not None:
            self.gates_seen.add(message.approval_id)
        self._offer(message)
        if self.quiet:
            return
        self._rule(message.space.address)
        self.console.print(Text("Still waiting for your decision (asked before the stop):", style="yellow"))
        self._message(message.persona, message.kind, message.content, message.attachment_name)

    def _rule(self, space: str) -> None:
        if space != self._last_space:
            self.console.rule(Text(self._label(space), style="bold"), style="dim")
            self._last_space = space

    def _print(self, m: OutboundMessage, space: str) -> None:
        self._rule(space)
        self._message(m.persona, m.kind, m.content, m.attachment_name)

    def _message(self, persona: str, kind: str, content: str, attachment_name: str | None) -> None:
        """``Persona: text``, each further line (and each wrapped part) indented under the text, never at column 0."""
        who = clean_line(persona).strip() or "?"
        if len(who) > _MAX_PERSONA:
            who = who[: _MAX_PERSONA - 3] + "..."
        head = f"{who}: "
        text = clean(content).expandtabs(4)
        if len(text) >= _MAX_TEXT:
            text = text[:_MAX_TEXT] + f"\n... ({len(content)} characters)"
        indent = len(head) if len(head) <= self.console.width // 2 else 2  # a narrow terminal: the text below the name
        lines = Text(text, style=_STYLES.get(kind, "")).wrap(self.console, max(8, self.console.width - indent), overflow="fold")
        out = Text(head.rstrip() if indent != len(head) else head, style="bold")
        for i, line in enumerate(lines):
            line.rstrip()
            if i or indent != len(head):
                out.append("\n" + (" " * indent if line.plain else ""))
            out.append_text(line)
        self.console.print(out, soft_wrap=True)  # every line fits: rich must not wrap it again (to column 0)
        if attachment_name:
            self.console.print(Text("  attached: " + clean_line(attachment_name), style="green"), soft_wrap=True)

    def _progress(self, content: str) -> None:
        lines = clean(content).splitlines()
        first = clean_line(lines[0]) if lines else ""
        spend = next((ln for ln in lines if ln.startswith("Spend:")), "")
        running = next((ln for ln in lines if ln.startswith("Running:")), "")
        dry = " [dry run]" if NOTICE in content else ""
        line = f">> {re.sub(r'[*]', '', first)}{dry} | {clean_line(spend)}" + (f" | {clean_line(running)}" if running else "")
        self.console.print(Text(line, style="dim"))


async def _pending_gates(service: Any, pid: int) -> list[tuple[int, MessageRow | None]]:
    """The project's pending approvals, oldest first, each with its latest approval message (None: none written)."""
    async with service.db.session() as s:
        ids = list((await s.execute(select(ApprovalRow.id).where(
            ApprovalRow.project_id == pid, ApprovalRow.status == "pending").order_by(ApprovalRow.id))).scalars())
        if not ids:
            return []
        rows = (await s.execute(select(MessageRow).where(
            MessageRow.approval_id.in_(ids), MessageRow.direction == "out", MessageRow.kind == "approval",
        ).order_by(MessageRow.id))).scalars()
        latest = {m.approval_id: m for m in rows}
    return [(i, latest.get(i)) for i in ids]


async def _show_waiting_gates(service: Any, chat: ConsoleChat, gates: list[tuple[int, MessageRow | None]]) -> None:
    """Show again every pending gate the Director has not seen in this process and the outbox will not show:
    its message went out before a stop (or a crash), so nothing would show it (or answer it) now."""
    for approval_id, row in gates:
        if approval_id in chat.gates_seen or row is None or row.status == "pending":
            continue  # seen, or still in the outbox (delivering it shows it and offers it)
        if row.address not in chat.spaces:
            async with service.db.session() as s:
                sp = (await s.execute(select(SpaceRow).where(
                    SpaceRow.agency_id == row.agency_id, SpaceRow.address == row.address))).scalar_one_or_none()
            if sp is not None:
                chat.spaces[row.address] = SpaceSpec(address=sp.address, kind=sp.kind, name=sp.name, parent=sp.parent)  # type: ignore[arg-type]
        space = chat.spaces.get(row.address) or SpaceSpec(address=row.address, kind="overview", name=row.address)
        chat.remind(OutboundMessage(
            id=row.id, agency_external_id=CONSOLE_AGENCY, space=space, persona=row.persona, content=row.content,
            kind="approval", attachment_name=row.attachment_name, approval_id=approval_id,
        ))


async def _open_shown_log(service: Any, chat: ConsoleChat) -> None:
    """The terminal's record of shown messages, in the data folder, for this database."""
    if chat.shown is not None or chat.quiet:
        return
    async with service.db.session() as s:
        a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == CONSOLE_AGENCY))).scalar_one()
        database = f"agency {a.id} created {a.created_at.isoformat() if a.created_at else '?'}"
    path = Path(service.settings.data_dir) / SHOWN_LOG
    try:
        chat.shown = ShownLog(path, database)
    except OSError as e:  # a read-only data folder: the run works, a resend after a crash may be shown twice
        log.warning("cannot keep the record of shown messages in %s (%s); a message resent after a crash may be "
                    "shown twice", path, e)


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
    await _open_shown_log(service, chat)
    try:
        return await _follow(service, chat, con, objective, oversight=oversight, auto_approve=auto_approve, out_dir=out_dir,
                             budget_usd=budget_usd, project_id=project_id)
    finally:
        if chat.shown is not None:
            chat.shown.close()


def _said(text: str) -> str:
    """A text of the service (which may quote a model) for a markup string: no escapes, no markup."""
    return escape(clean(text))


async def _auto_decide(service: Any, con: Console, approval_id: int) -> None:
    try:
        result = await service.decide(approval_id, True, DIRECTOR)
        con.print(f"[yellow]Director (auto-approve): {_said(result)}[/yellow]")
    except Exception as e:  # noqa: BLE001 - already decided, superseded, project ended: say so and go on
        con.print(f"[dim]{_said(getattr(e, 'user_message', str(e)))}[/dim]")


async def _follow(service, chat: ConsoleChat, con: Console, objective: str | None, *, oversight: str, auto_approve: bool,
                  out_dir: Path, budget_usd: float | None, project_id: int | None) -> tuple[int, str, Path | None]:
    if project_id is not None:
        info = await service.project(project_id)  # NotFoundError names the project
        objective = info.objective
        await service.start()
        if info.status in ("paused", "blocked"):
            con.print(_said(await service.resume(project_id, DIRECTOR)))
        con.print(f"[dim]Following project #{project_id} ({_said(info.status)}).[/dim]")
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
            con.print(f"[red]Project #{pid} is blocked: {_said((await service.project(pid)).error or '')}[/red]\n"
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
            await _auto_decide(service, con, appr.approval_id)  # type: ignore[arg-type]
            continue
        # a gate asked before a stop is in no queue and on no screen: show it again (and offer it to auto-approve)
        gates = await _pending_gates(service, pid)
        await _show_waiting_gates(service, chat, gates)
        if auto_approve and not chat.approvals.empty():
            continue
        if reader is not None or deferred:
            line: str | None = ""
            if deferred and gates:
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
                if text.split()[0].lower() in ("/approve", "/reject") and not gates:
                    deferred.append(text)
                    continue
                try:
                    result = await service.handle_message(CONSOLE_AGENCY, f"overview:{pid}", DIRECTOR, text)
                    if result is not None:
                        con.print(f"[yellow]{_said(result.text)}[/yellow]")
                except Exception as e:
                    con.print(f"[red]{_said(getattr(e, 'user_message', str(e)))}[/red]")
                continue
            if reader is None and not deferred and not auto_approve:
                auto_approve = True
                con.print("[dim]Input closed; approving automatically from now on.[/dim]")
        await asyncio.sleep(0.05)
    if (await service.project(pid)).status in TERMINAL:  # let the after-delivery hooks (memory, learning) finish
        await asyncio.wait_for(service.engine.wait_project(pid), 600)
    await service.dispatcher.drain()
    if auto_approve:  # gates raised after delivery (the Learning Manager's system-message revisions), also before a stop
        for _ in range(100):  # each decision may raise another gate; bounded all the same
            await _show_waiting_gates(service, chat, await _pending_gates(service, pid))
            if chat.approvals.empty():
                break
            while not chat.approvals.empty():
                await _auto_decide(service, con, chat.approvals.get_nowait().approval_id)  # type: ignore[arg-type]
            await service.dispatcher.drain()
    final = await service.project(pid)
    path: Path | None = None
    md = await service.deliverable(pid)
    if md:
        slug = re.sub(r"[^a-z0-9]+", "-", (objective or "").lower()).strip("-")[:40] or "deliverable"
        path = out_dir / f"project-{pid}-{slug}.md"
        await asyncio.to_thread(_write_file, path, md)
    await cost_report(service, pid, con)
    return pid, final.status, path


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


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
