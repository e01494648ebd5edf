"""The /command grammar and who may use what.

Humans type these as text; LLM agents emit them in ``AgentTurn.commands``.
Both go through :func:`parse` and :func:`authorize`, so a model can never do
more than its role allows and can never issue a Director command, whatever
its output contains. Only the ``commands`` list of a turn is parsed: a
"/approve" written inside a message is just text.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from agency.errors import CommandError, PermissionDeniedError

Role = Literal["director", "pm", "collaborator", "specialist", "learning", "human"]
ArgKind = Literal["task", "handle", "rating", "choice", "text", "word", "number", "int"]

MAX_COMMAND_CHARS = 4000
_HANDLE = re.compile(r"^@?([A-Za-z][A-Za-z0-9_-]{1,31})$")
_MENTION = re.compile(r"^<@!?(\d{5,25})>$")
_TASK = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    optional: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spec:
    name: str  # "submit", "project new"
    roles: frozenset[str]
    args: tuple[Arg, ...] = ()
    help: str = ""

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for a in self.args:
            label = "|".join(a.choices) if a.choices else f"<{a.name}>"
            parts.append(f"[{label}]" if a.optional else label)
        return " ".join(parts)


DIRECTOR = frozenset({"director"})
HUMAN_SPECIALIST = frozenset({"specialist", "human"})

SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        # Director
        Spec("project new", DIRECTOR, (Arg("objective", "text"),), "start a project"),
        Spec("project status", DIRECTOR | {"pm"}, (), "show the live status"),
        Spec("project pause", DIRECTOR, (), "pause before the next model call"),
        Spec("project resume", DIRECTOR, (), "resume a paused project"),
        Spec("project cancel", DIRECTOR, (), "cancel the project"),
        Spec("approve", DIRECTOR, (Arg("choice", "int", optional=True),), "approve (or pick approach N)"),
        Spec("reject", DIRECTOR, (Arg("reason", "text"),), "reject with a reason"),
        Spec("feedback", DIRECTOR, (Arg("handle", "handle"), Arg("rating", "rating"), Arg("text", "text", optional=True)), "rate a member 1-5"),
        Spec("budget", DIRECTOR, (Arg("amount", "number", optional=True),), "show or set the budget in USD"),
        Spec("specialist list", DIRECTOR, (), "list the agency's specialists"),
        Spec("specialist show", DIRECTOR, (Arg("handle", "handle"),), "show a specialist"),
        Spec("specialist history", DIRECTOR, (Arg("handle", "handle"),), "system-message versions"),
        Spec("specialist rollback", DIRECTOR, (Arg("handle", "handle"), Arg("version", "int")), "restore a version"),
        Spec("stream add-human", DIRECTOR, (Arg("member", "handle"),), "add a human specialist to this stream"),
        Spec("resource add", DIRECTOR, (Arg("text", "text"),), "add knowledge"),
        Spec("memory search", DIRECTOR, (Arg("query", "text"),), "search the agency's memory"),
        # PM
        Spec("plan", frozenset({"pm"}), (), "write or show the work plan"),
        Spec("assign", frozenset({"pm"}), (Arg("task", "task"), Arg("handle", "handle")), "assign a task"),
        Spec("hire", frozenset({"pm"}), (Arg("role", "word"),), "reuse or create a specialist"),
        Spec("replan", frozenset({"pm"}), (Arg("reason", "text", optional=True),), "revise the plan"),
        Spec("escalate", frozenset({"pm"}), (Arg("reason", "text"),), "ask the Director"),
        Spec("deliver", frozenset({"pm"}), (), "assemble the deliverable"),
        # Collaborator
        Spec("handoff", frozenset({"collaborator"}), (Arg("task", "task"), Arg("handle", "handle")), "hand a task over"),
        Spec("review", frozenset({"collaborator"}), (Arg("task", "task"), Arg("decision", "choice", choices=("accept", "revise")), Arg("notes", "text", optional=True)), "review a submission"),
        Spec("blocker", frozenset({"collaborator"}), (Arg("reason", "text"),), "raise a blocker to the PM"),
        Spec("sync", frozenset({"collaborator"}), (), "summarise the stream"),
        # Specialist (LLM or human)
        Spec("accept", HUMAN_SPECIALIST, (Arg("task", "task"),), "take a task"),
        Spec("submit", HUMAN_SPECIALIST, (Arg("task", "task"), Arg("output", "text", optional=True)), "submit a task's output"),
        Spec("ask", HUMAN_SPECIALIST | {"collaborator", "pm"}, (Arg("handle", "handle"), Arg("question", "text")), "ask a member"),
        Spec("blocked", HUMAN_SPECIALIST, (Arg("reason", "text"),), "report being blocked"),
        Spec("commands", HUMAN_SPECIALIST, (), "list custom commands"),
        Spec("todo", frozenset({"human", "director"}), (), "list tasks assigned to you"),
        # Learning & Performance Manager
        Spec("evaluate", frozenset({"learning"}) | DIRECTOR, (Arg("handle", "handle"),), "evaluate a specialist"),
        Spec("lesson", frozenset({"learning"}), (Arg("text", "text"),), "store a lesson"),
        Spec("revise", frozenset({"learning"}), (Arg("handle", "handle"),), "propose a system-message version"),
    ]
}
GROUPS = {name.split()[0] for name in SPECS if " " in name}
RESERVED_NAMES = {name.split()[0] for name in SPECS}


@dataclass(frozen=True)
class Command:
    """A parsed, well-formed command. ``args`` values are typed (int, float, str)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    custom: bool = False  # a specialist's declared custom command


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes: fall back to plain whitespace
        return text.split()


def parse(text: str, custom: frozenset[str] | set[str] = frozenset()) -> Command:
    """Parse one command line. Raises CommandError with what to fix."""
    if not isinstance(text, str):
        raise CommandError("A command must be text such as `/submit T1`.")
    raw = text.strip()
    if not raw.startswith("/"):
        raise CommandError(f"Commands start with '/': got {raw[:40]!r}. Example: `/submit T1`.")
    if len(raw) > MAX_COMMAND_CHARS:
        raise CommandError(f"That command is {len(raw)} characters; the limit is {MAX_COMMAND_CHARS}. Put long text in the message instead.")
    head, _, rest = raw[1:].partition(" ")
    # the first line holds the command; text arguments may continue on later lines
    head = head.split("\n", 1)[0].lower()
    if "\n" in raw[1:].split(" ", 1)[0]:
        rest = raw[1:].split("\n", 1)[1] + (" " + rest if rest else "")
    name = head
    if head in GROUPS:
        sub, _, rest2 = rest.lstrip().partition(" ")
        sub = sub.strip().lower()
        if f"{head} {sub}" not in SPECS:
            subs = sorted(n.split()[1] for n in SPECS if n.startswith(head + " "))
            raise CommandError(f"`/{head}` needs one of: {', '.join(subs)}. Example: `/{head} {subs[0]}`.")
        name, rest = f"{head} {sub}", rest2
    if name not in SPECS:
        if name in custom:
            return Command(name=name, args={"text": rest.strip()}, raw=raw, custom=True)
        raise CommandError(f"Unknown command `/{name}`. Known: {', '.join('/' + n for n in sorted(RESERVED_NAMES))}.")
    spec = SPECS[name]
    return Command(name=name, args=_parse_args(spec, rest), raw=raw)


def _parse_args(spec: Spec, rest: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    remaining = rest.strip()
    for a in spec.args:
        if not remaining:
            if a.optional:
                continue
            raise CommandError(f"`/{spec.name}` is missing <{a.name}>. Usage: `{spec.usage}`.")
        if a.kind == "text":  # a text argument takes the rest of the line
            args[a.name] = remaining
            remaining = ""
            break
        toks = _tokens(remaining)
        tok = toks[0] if toks else remaining.split()[0]
        remaining = remaining.strip()[len(remaining.strip().split(None, 1)[0]):].strip()
        args[a.name] = _convert(spec, a, tok)
    if remaining:
        raise CommandError(f"`/{spec.name}` got unexpected text {remaining[:40]!r}. Usage: `{spec.usage}`.")
    return args


def _convert(spec: Spec, a: Arg, tok: str) -> Any:
    usage = f"Usage: `{spec.usage}`."
    if a.kind == "handle":
        m = _MENTION.match(tok)
        if m:
            return f"<@{m.group(1)}>"
        m = _HANDLE.match(tok)
        if not m:
            raise CommandError(f"<{a.name}> must be a handle like @Researcher-A, got {tok[:40]!r}. {usage}")
        return m.group(1)
    if a.kind == "task":
        if not _TASK.match(tok):
            raise CommandError(f"<{a.name}> must be a task id like T1, got {tok[:40]!r}. {usage}")
        return tok
    if a.kind == "rating":
        if not tok.isdecimal() or not 1 <= int(tok) <= 5:  # isdecimal: what int() reads (isdigit takes "²")
            raise CommandError(f"<rating> must be a whole number from 1 to 5, got {tok[:20]!r}. {usage}")
        return int(tok)
    if a.kind == "int":
        if not tok.isdecimal() or int(tok) > 10**9:
            raise CommandError(f"<{a.name}> must be a positive whole number, got {tok[:20]!r}. {usage}")
        return int(tok)
    if a.kind == "number":
        try:
            v = float(tok.lstrip("$"))
        except ValueError:
            raise CommandError(f"<{a.name}> must be a number, got {tok[:20]!r}. {usage}") from None
        if not (0 < v < 1e9):
            raise CommandError(f"<{a.name}> must be greater than 0. {usage}")
        return v
    if a.kind == "choice":
        if tok.lower() not in a.choices:
            raise CommandError(f"<{a.name}> must be one of {', '.join(a.choices)}, got {tok[:20]!r}. {usage}")
        return tok.lower()
    return tok  # word


def authorize(cmd: Command, role: str, *, is_model: bool, custom: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise PermissionDeniedError unless ``role`` may issue ``cmd``.

    A model can never issue a Director command, whatever role it claims.
    """
    if cmd.custom:
        if cmd.name in custom and role in {"specialist", "human"}:
            return
        raise PermissionDeniedError(f"`/{cmd.name}` is not one of your commands.")
    spec = SPECS[cmd.name]
    if is_model and spec.roles <= DIRECTOR:
        raise PermissionDeniedError(f"`/{cmd.name}` is a Director command; only the human Director may use it.")
    if is_model and role == "director":
        raise PermissionDeniedError("A model cannot act as the Director.")
    if role not in spec.roles:
        allowed = ", ".join(sorted(spec.roles))
        raise PermissionDeniedError(f"`/{cmd.name}` is for {allowed}; you are {role}.")


def commands_for(role: str) -> list[Spec]:
    return [s for s in SPECS.values() if role in s.roles]


def help_text(role: str, custom: list[tuple[str, str]] | None = None) -> str:
    lines = [f"`{s.usage}` - {s.help}" for s in commands_for(role)]
    for name, desc in custom or []:
        lines.append(f"`/{name} <text>` - {desc}")
    return "\n".join(lines)
