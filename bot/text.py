"""Pure text helpers for Discord: the 2000-character limit, code fences, names."""
from __future__ import annotations

import re

LIMIT = 2000
FENCE = "```"
_CLOSE = "\n" + FENCE  # what closing an open fence at the end of a chunk costs
_HEADER_MAX = 30  # a longer info string is reopened as a bare fence
_RESERVE = len(_CLOSE)


def _fence_toggle(line: str, fence: str | None) -> tuple[bool, str | None]:
    """(is a fence line, the open fence header after it)."""
    s = line.strip()
    if not s.startswith(FENCE):
        return False, fence
    if fence is None:
        if len(s) > 6 and s.endswith(FENCE):  # ```inline``` on one line
            return False, None
        header = s if len(s) <= _HEADER_MAX else FENCE
        return True, header
    if s.rstrip("`") == "" or s == FENCE:
        return True, None
    return False, fence  # ```lang inside an open block is content


def _hard_split(piece: str, size: int) -> list[str]:
    """Split one over-long line into parts of at most ``size``, at a space when there is one."""
    out: list[str] = []
    while len(piece) > size:
        cut = piece.rfind(" ", size // 2, size)
        cut = cut + 1 if cut > 0 else size
        out.append(piece[:cut])
        piece = piece[cut:]
    if piece:
        out.append(piece)
    return out


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` characters.

    Splits at line ends (at spaces inside a line too long for one message);
    a code block cut in two is closed at the end of one part and reopened,
    with its language, at the start of the next, so each part renders on its
    own. Parts that would be only whitespace are dropped (Discord refuses
    empty messages).
    """
    if limit < 100:
        raise ValueError("limit must be at least 100 characters")
    text = (text or "").replace("\r\n", "\n")
    if len(text) <= limit:
        return [text] if text.strip() else []
    room = limit - _RESERVE - _HEADER_MAX - 1  # the largest piece that always fits in a fresh part
    chunks: list[str] = []
    cur = ""
    head = ""  # the reopened fence at the start of ``cur`` (not content of its own)
    fence: str | None = None  # header of the fence open at the end of ``cur``

    def close(body: str) -> str:
        return body if fence is None else body.rstrip("\n") + _CLOSE

    for line in text.splitlines(keepends=True):
        pieces = [line] if len(line) <= room else _hard_split(line, room)
        for piece in pieces:
            after = _fence_toggle(piece, fence)[1] if len(pieces) == 1 else fence
            need = len(cur) + len(piece) + (_RESERVE if after is not None else 0)
            if need > limit and cur[len(head):].strip():
                chunks.append(close(cur))
                head = cur = fence + "\n" if fence is not None else ""
            cur += piece
            fence = after
    if cur[len(head):].strip():
        chunks.append(close(cur))
    return chunks


def truncate(text: str, limit: int = LIMIT) -> str:
    """One message's worth of ``text`` (used when editing in place)."""
    text = text or ""
    if len(text) <= limit:
        return text
    cut = text[: limit - 2]
    if cut.count("\n" + FENCE) % 2 == 1 or (cut.startswith(FENCE) and cut.count(FENCE) % 2 == 1):
        cut = cut[: limit - 2 - len(_CLOSE)] + _CLOSE
    return cut + " …"


_BANNED = re.compile(r"discord|clyde", re.IGNORECASE)


def persona_name(persona: str) -> str:
    """A webhook username Discord accepts: 1-80 characters, no 'discord'/'clyde', not everyone/here."""
    name = _BANNED.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], (persona or "").strip())[:80]
    if not name or name.lower() in ("everyone", "here"):
        name = f"member {name}".strip()[:80] or "A-TEAMs"
    return name


_CHANNEL_BAD = re.compile(r"[^a-z0-9_\-]+")


def channel_name(name: str) -> str:
    """The name Discord gives a text channel for ``name`` (lowercase, dashes)."""
    n = _CHANNEL_BAD.sub("-", (name or "").strip().lower()).strip("-")
    n = re.sub(r"-{2,}", "-", n)
    return n[:100] or "channel"
