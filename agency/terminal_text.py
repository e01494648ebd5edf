"""Text from models (and anything else read back from the database) made safe to show on a terminal.

A terminal obeys what it prints: an escape sequence in a model's reply can set
the window title (OSC 0/2), write the clipboard (OSC 52), erase or rewrite
lines (CSI), move the cursor, switch character sets; a carriage return or
backspaces overwrite what was printed; bidirectional overrides reorder what
the reader sees. :func:`clean` removes all of that and keeps the text:

- every ESC sequence (CSI, OSC / DCS / SOS / PM / APC strings up to their
  terminator, and the short two- and three-byte escapes), and their 8-bit C1
  forms, are removed whole;
- every other C0 control except newline and tab, DEL and every C1 control are
  removed (an ESC whose sequence is cut short is removed alone: what follows it
  is shown as plain text);
- a carriage return (alone or in CRLF), a form feed, a vertical tab and the
  Unicode line and paragraph separators become a newline, so text that tried
  to overwrite a line is shown on a line of its own;
- bidirectional embeddings, overrides, isolates and marks are removed.

:func:`clean_line` is the same for one-line fields (names, labels, status):
newlines and tabs become spaces.

This makes text inert; it does not stop a model from writing ``Director:`` at
the start of a line. The console renders each message so that its lines can
only appear under its speaker (see ``agency.console``).
"""
from __future__ import annotations

import re

__all__ = ["clean", "clean_line"]

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_NEWLINES = "\r\x0b\x0c\u2028\u2029\x85"

# anything that needs work; most text has none of it and is returned as is
_UNSAFE = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}\u2028\u2029]")

_SEQUENCES = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]          # CSI: parameters, intermediates, final byte
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) [^\x07\x1b\x9c]*      # OSC, DCS, SOS, PM, APC strings ...
          (?:\x07|\x1b\\|\x9c)                                       # ... up to BEL or ST (unterminated: see below)
    | \x1b [\x20-\x2f]* [\x30-\x7e]                                  # other escapes: ESC c, ESC 7, ESC ( B, ESC # 8 ...
    """,
    re.VERBOSE,
)
_CONTROLS = re.compile(f"[\\x00-\\x08\\x0e-\\x1f\\x7f-\\x9f{_BIDI}]")
_TO_NEWLINE = str.maketrans({c: "\n" for c in _NEWLINES})


def clean(text: str | None) -> str:
    """``text`` without control or escape sequences; newlines and tabs kept."""
    if not text:
        return ""
    if not _UNSAFE.search(text):
        return text
    text = _SEQUENCES.sub("", text)
    text = text.replace("\r\n", "\n").translate(_TO_NEWLINE)
    # what is left of a control (a lone ESC, an unterminated string's introducer, NUL, BEL, backspace, C1, bidi)
    return _CONTROLS.sub("", text)


def clean_line(text: str | None) -> str:
    """:func:`clean` for a one-line field: newlines and tabs become spaces."""
    return " ".join(clean(text).split("\n")).replace("\t", " ")
