"""Memory benchmark: fill a ChromaMemory with synthetic entries and time it.

For each size it reports the end-to-end add rate (embedding + upsert), the
search latency p50/p95 (query embedding included) without a filter, with a
one-key and a two-key ``where``, the recall of the searches (the entry a query
was made from is found first / in the top 5) and the recall of Chroma's HNSW
index against an exact cosine search over the same vectors, plus the size on
disk. Sizes are filled incrementally: the 10,000 run reuses the 1,000 entries.

    python -m bench.memory_recall [--sizes 1000 10000] [--queries 50]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agency.embeddings import LocalMiniLMEmbedding
from agency.memory import KINDS, ChromaMemory
from agency.ports import MemoryEntry

log = logging.getLogger(__name__)

__all__ = ["run_memory_recall", "synthetic_entries"]

AGENCY = 1
MEMBERS = [("Researcher-A", "researcher"), ("Researcher-B", "researcher"), ("Writer-A", "writer"),
           ("Analyst-A", "analyst"), ("Editor-A", "editor"), ("Designer-A", "designer")]
_SUBJECTS = ["the espresso market", "burr grinders", "our pricing model", "the onboarding flow", "customer churn",
             "the supplier contract", "the launch plan", "competitor analysis", "the API latency", "the brand voice",
             "the hiring pipeline", "warehouse logistics", "the mobile app", "quarterly revenue", "the data pipeline",
             "the survey results", "the support backlog", "green coffee sourcing", "the loyalty programme",
             "the pitch deck"]
_VERBS = ["depends on", "was improved by", "is limited by", "should be measured against", "was summarised with",
          "needs a review of", "correlates with", "is documented in", "was delayed by", "benefits from"]
_OBJECTS = ["a two-week pilot", "interviews with twelve cafe owners", "the March sales figures",
            "a cheaper shipping option", "a clearer success criterion", "fewer approval steps",
            "the new caching layer", "a weekly status report", "a competitor price list", "an A/B test on the homepage",
            "a smaller batch size", "a revised style guide", "the legal team's notes", "three customer personas",
            "a backlog grooming session", "an updated budget estimate"]
_TAILS = ["Cite every figure.", "Keep it under 200 words.", "Ask the Director before spending.", "",
          "Flag risks early.", "Prefer primary sources.", "Check units and currencies.", "Note open questions."]


def synthetic_entries(n: int, *, seed: int = 0, start: int = 0) -> list[MemoryEntry]:
    """``n`` varied entries for agency 1 across kinds, members, roles, projects and streams."""
    rng = random.Random(seed * 1_000_003 + start)
    out = []
    for i in range(start, start + n):
        member, role = MEMBERS[rng.randrange(len(MEMBERS))]
        kind = KINDS[rng.randrange(len(KINDS))]
        text = (
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} (note {i}). "
            f"{rng.choice(_TAILS)}"
        ).strip()
        out.append(
            MemoryEntry(
                text=text,
                kind=kind,
                agency_id=AGENCY,
                project_id=None if kind == "lesson" else 1 + i % 20,
                stream=None if kind == "lesson" else f"stream-{i % 5}",
                member=member,
                role=role,
                source=f"bench-{i}",
            )
        )
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _query_from(text: str, rng: random.Random) -> str:
    """A paraphrase-ish query: the entry's words with about a third dropped."""
    words = text.split()
    kept = [w for w in words if rng.random() > 0.35]
    return " ".join(kept or words[:3])


async def _timed(coro: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    result = await coro
    return (time.perf_counter() - t) * 1000.0, result


async def run_memory_recall(
    sizes: tuple[int, ...] | list[int] = (1000, 10000),
    queries: int = 50,
    tmp_dir: str | Path | None = None,
    *,
    batch: int = 500,
    seed: int = 7,
) -> dict[str, Any]:
    """Fill, query and measure; returns the figures (latencies in ms)."""
    embedding = LocalMiniLMEmbedding()
    t = time.perf_counter()
    embedding(["warm up"])
    load_s = time.perf_counter() - t

    probe = [e.text for e in synthetic_entries(512, seed=seed + 1)]
    t = time.perf_counter()
    embedding(probe)
    embed_per_s = len(probe) / (time.perf_counter() - t)
    tokens = [len(enc.ids) for enc in _tokenize(embedding, probe)]

    single = []
    for text in probe[:queries]:
        t = time.perf_counter()
        embedding([text])
        single.append((time.perf_counter() - t) * 1000.0)

    figures: dict[str, Any] = {
        "embedding": embedding.name(),
        "model_load_s": round(load_s, 2),
        "embed_per_s_batch": round(embed_per_s, 1),
        "embed_single_ms_p50": round(_pct(single, 50), 2),
        "mean_tokens_per_entry": round(statistics.mean(tokens), 1),
        "sizes": {},
    }

    with tempfile.TemporaryDirectory(prefix="ateams-bench-") as auto_dir:
        base = Path(tmp_dir) if tmp_dir is not None else Path(auto_dir)
        path = base / "chroma"
        memory = ChromaMemory(path, embedding=embedding)
        rng = random.Random(seed)
        stored: list[MemoryEntry] = []
        for size in sorted(sizes):
            new = synthetic_entries(size - len(stored), seed=seed, start=len(stored))
            t = time.perf_counter()
            for s in range(0, len(new), batch):
                await memory.add(new[s : s + batch])
            add_s = time.perf_counter() - t
            stored.extend(new)
            count = await memory.count(AGENCY)

            picks = [stored[rng.randrange(len(stored))] for _ in range(queries)]
            qtexts = [_query_from(e.text, rng) for e in picks]
            plain, member_f, two_f = [], [], []
            hit1 = hit5 = 0
            results = []
            for entry, q in zip(picks, qtexts):
                ms, hits = await _timed(memory.search(AGENCY, q, limit=5))
                plain.append(ms)
                results.append(hits)
                texts = [h.text for h in hits]
                hit1 += bool(texts) and texts[0] == entry.text
                hit5 += entry.text in texts
                ms, _ = await _timed(memory.search(AGENCY, q, where={"member": entry.member}, limit=5))
                member_f.append(ms)
                ms, _ = await _timed(
                    memory.search(AGENCY, q, where={"role": entry.role, "kind": entry.kind}, limit=5)
                )
                two_f.append(ms)

            ann = await asyncio.to_thread(_ann_recall, memory, embedding, qtexts, results, 5)
            figures["sizes"][str(size)] = {
                "entries": count,
                "add_per_s": round(len(new) / add_s, 1),
                "search_ms_p50": round(_pct(plain, 50), 2),
                "search_ms_p95": round(_pct(plain, 95), 2),
                "search_where_member_ms_p50": round(_pct(member_f, 50), 2),
                "search_where_member_ms_p95": round(_pct(member_f, 95), 2),
                "search_where_role_kind_ms_p50": round(_pct(two_f, 50), 2),
                "search_where_role_kind_ms_p95": round(_pct(two_f, 95), 2),
                "source_hit_at_1": round(hit1 / queries, 3),
                "source_hit_at_5": round(hit5 / queries, 3),
                "hnsw_recall_at_5_vs_exact": round(ann, 3),
                "disk_mb": round(_dir_size(path) / 1e6, 1),
            }
            log.info("memory bench: %s entries done", size)
    return figures


def _tokenize(embedding: LocalMiniLMEmbedding, texts: list[str]) -> list[Any]:
    from agency.embeddings import _runtime

    rt = _runtime(embedding.model_path, embedding.tokenizer_path, embedding.max_length, embedding.threads)
    return rt.tokenizer.encode_batch(texts)


def _ann_recall(
    memory: ChromaMemory, embedding: LocalMiniLMEmbedding, qtexts: list[str], results: list[Any], k: int
) -> float:
    """Share of the exact cosine top-k (over every stored vector) that the HNSW search returned."""
    ids: list[str] = []
    vecs: list[Any] = []
    for kind in KINDS:
        got = memory._collection(AGENCY, kind).get(include=["embeddings"])
        ids.extend(got["ids"])
        vecs.extend(got["embeddings"])
    matrix = np.asarray(vecs, dtype=np.float32)
    queries = embedding.embed(qtexts)
    scores = queries @ matrix.T
    found = 0
    for row, hits in zip(scores, results):
        exact = {ids[j] for j in np.argsort(-row)[:k]}
        found += len(exact & {h.id for h in hits})
    return found / (k * len(qtexts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dir", default=None, help="keep the database here instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    figures = asyncio.run(run_memory_recall(tuple(args.sizes), args.queries, args.dir))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"embedding {figures['embedding']}: model load {figures['model_load_s']} s, "
          f"{figures['embed_per_s_batch']} texts/s batched ({figures['mean_tokens_per_entry']} tokens each), "
          f"{figures['embed_single_ms_p50']} ms for one text")
    for size, f in figures["sizes"].items():
        print(f"\n{size} entries ({f['disk_mb']} MB on disk), add {f['add_per_s']} entries/s")
        print(f"  search            p50 {f['search_ms_p50']:7.2f} ms  p95 {f['search_ms_p95']:7.2f} ms")
        print(f"  where member      p50 {f['search_where_member_ms_p50']:7.2f} ms  "
              f"p95 {f['search_where_member_ms_p95']:7.2f} ms")
        print(f"  where role+kind   p50 {f['search_where_role_kind_ms_p50']:7.2f} ms  "
              f"p95 {f['search_where_role_kind_ms_p95']:7.2f} ms")
        print(f"  source entry found: first {f['source_hit_at_1']:.0%}, top 5 {f['source_hit_at_5']:.0%}; "
              f"HNSW recall@5 vs exact {f['hnsw_recall_at_5_vs_exact']:.0%}")


if __name__ == "__main__":
    main()
