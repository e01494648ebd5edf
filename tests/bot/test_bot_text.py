"""Splitting at Discord's 2000 characters without breaking code blocks; names; pacing."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.text import channel_name, persona_name, split_message, truncate

FENCE_LINE = re.compile(r"^\s*```.*$", re.MULTILINE)


def fences_balanced(chunk: str) -> bool:
    opened = False
    for line in chunk.splitlines():
        s = line.strip()
        if s.startswith("```") and not (len(s) > 6 and s.endswith("```") and not opened):
            opened = not opened if (not opened or s.rstrip("`") == "") else opened
    return not opened


def words(text: str) -> str:
    return re.sub(r"\s+", "", FENCE_LINE.sub("", text))


def test_short_text_is_one_message():
    assert split_message("hello") == ["hello"]
    assert split_message("x" * 2000) == ["x" * 2000]
    assert split_message("") == []
    assert split_message("   \n  ") == []


def test_splits_at_line_ends():
    lines = [f"line {i} " + "a" * 80 for i in range(60)]
    parts = split_message("\n".join(lines))
    assert len(parts) > 1
    assert all(len(p) <= 2000 for p in parts)
    assert "".join(parts) == "\n".join(lines)  # nothing lost, nothing added outside code
    for p in parts[:-1]:
        assert p.endswith("\n")  # cut at a line end


def test_a_long_line_is_cut_at_spaces():
    text = "word " * 1000
    parts = split_message(text)
    assert all(len(p) <= 2000 for p in parts)
    assert "".join(parts) == text
    assert all(p.endswith(" ") for p in parts[:-1])


def test_code_block_is_closed_and_reopened_with_its_language():
    code = "\n".join(f"print({i})  # " + "x" * 60 for i in range(80))
    text = "Here is the script:\n```python\n" + code + "\n```\nThat's all."
    parts = split_message(text)
    assert len(parts) >= 3
    assert all(len(p) <= 2000 for p in parts)
    assert parts[0].startswith("Here is the script:\n```python\n")
    for p in parts[:-1]:
        assert p.endswith("\n```")
    for p in parts[1:]:
        assert p.startswith("```python\n")
    assert all(fences_balanced(p) for p in parts)
    assert words("".join(parts)) == words(text)


def test_a_fence_line_is_never_the_only_content_of_a_part():
    body = "a" * 1990
    parts = split_message(body + "\n```\ncode\n```\n")
    assert all(p.strip() not in ("```", "```\n```") for p in parts)


def test_respects_a_smaller_limit():
    text = "```\n" + "\n".join("y" * 50 for _ in range(20)) + "\n```"
    parts = split_message(text, limit=200)
    assert all(len(p) <= 200 for p in parts)
    assert all(fences_balanced(p) for p in parts)
    with pytest.raises(ValueError):
        split_message(text, limit=10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="abc xyz.,", min_size=0, max_size=300), st.just("```"), st.just("```js"),
                          st.text(alphabet="ab ", min_size=1500, max_size=5000)), max_size=40))
def test_property_every_part_fits_and_renders(lines):
    text = "\n".join(lines)
    parts = split_message(text)
    assert all(0 < len(p) <= 2000 for p in parts)
    assert all(p.strip() for p in parts)
    assert words("".join(parts)) == words(text)
    if len(text) > 2000:
        assert all(fences_balanced(p) for p in parts)


def test_truncate_for_edits():
    assert truncate("short") == "short"
    t = truncate("z" * 5000)
    assert len(t) <= 2000 and t.endswith("…")
    t = truncate("```\n" + "q" * 5000)
    assert len(t) <= 2000 and "\n```" in t


def test_persona_names_discord_accepts():
    assert persona_name("Researcher-A") == "Researcher-A"
    assert "discord" not in persona_name("Discord-Expert").lower()
    assert "clyde" not in persona_name("clyde").lower()
    assert persona_name("everyone") != "everyone"
    assert len(persona_name("x" * 200)) == 80
    assert persona_name("") == "member"


def test_channel_names():
    assert channel_name("Market Research") == "market-research"
    assert channel_name("P1: Ideas!!") == "p1-ideas"
    assert channel_name("") == "channel"
