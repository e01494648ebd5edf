"""Token usage and cost."""
from __future__ import annotations

import math

from agency.settings import Price


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token) for when a server reports none."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def format_usd(v: float) -> str:
    if v == 0:
        return "$0.00"
    if v < 0.01:
        return f"${v:.4f}"
    return f"${v:.2f}"
