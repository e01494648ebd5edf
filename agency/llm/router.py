"""Model selection: which tier a task runs on, and escalation to a stronger one."""
from __future__ import annotations

from collections.abc import Mapping

from agency.settings import RoutingSettings


def weighted_score(scores: Mapping[str, int], weights: Mapping[str, float]) -> float:
    total = sum(weights.values()) or 1.0
    return round(sum(scores.get(k, 3) * w for k, w in weights.items()) / total, 3)


def choose_tier(scores: Mapping[str, int] | None, routing: RoutingSettings, tiers: list[str], default: str) -> tuple[str, float]:
    """The highest tier whose threshold the weighted score reaches; ``default`` otherwise."""
    if not scores:
        return default, 0.0
    score = weighted_score(scores, routing.weights)
    best, best_t = default, float("-inf")
    for tier, threshold in routing.thresholds.items():
        if tier in tiers and score >= threshold and threshold > best_t:
            best, best_t = tier, threshold
    return best, score


def next_tier(tier: str | None, tiers: list[str]) -> str | None:
    """The tier after ``tier`` in the configured order (weakest first), or None at the top."""
    if tier not in tiers:
        return tiers[0] if tiers else None
    i = tiers.index(tier)
    return tiers[i + 1] if i + 1 < len(tiers) else None
