"""The recall hook: which memories a member gets before a turn, within top_k and the token budget."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agency.embeddings import LocalMiniLMEmbedding
from agency.memory import ChromaMemory, SimpleMemory
from agency.ports import MemoryEntry
from agency.recall import AGENCY_LESSON, chunk_text, estimate_tokens, make_recall, render_record, store_knowledge
from agency.settings import Settings, load_settings


@pytest.fixture(scope="module")
def local_embedding() -> LocalMiniLMEmbedding:
    ef = LocalMiniLMEmbedding()
    ef(["warm up"])  # loads once per process
    return ef


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **memory: Any) -> Settings:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    return load_settings(data_dir=tmp_path, memory={"enabled": False, **memory})


ENTRIES = [
    MemoryEntry("Writer-A lesson: open the report with its conclusion", "lesson", 1, member="Writer-A", role="writer", source="evaluation"),
    MemoryEntry("Writers: cite every report source inline", "lesson", 1, member="Writer-B", role="writer", source="evaluation"),
    MemoryEntry("Researchers: date every report source", "lesson", 1, member="Researcher-A", role="researcher", source="evaluation"),
    MemoryEntry("Everyone: keep the report plain and short", "lesson", 1, source=AGENCY_LESSON),
    MemoryEntry("House style for a report: short sentences, active voice", "knowledge", 1, source="style.md"),
    MemoryEntry("Report of another agency", "knowledge", 2, source="theirs.md"),
    MemoryEntry("T1 report findings from an earlier project", "work", 1, project_id=7, member="Researcher-A", source="T1"),
]


async def test_own_lessons_come_first_then_role_agency_and_knowledge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = SimpleMemory()
    await mem.add(ENTRIES)
    recall = make_recall(mem, _settings(tmp_path, monkeypatch, top_k=10))
    text, retrieved = await recall(1, "Writer-A", "writer", "write the report", None)
    scopes = [r["scope"] for r in retrieved]
    assert scopes[0] == "own lesson"
    assert set(scopes) == {"own lesson", "role lesson", "agency lesson", "knowledge"}
    assert "Researchers: date" not in text  # another role's lesson
    assert "another agency" not in text
    assert "earlier project" not in text  # work of other projects is not this project's work
    assert all(set(r) >= {"id", "kind", "distance", "source"} for r in retrieved)
    assert text.splitlines()[0] == "- (own lesson) Writer-A lesson: open the report with its conclusion"
    assert "- (knowledge: style.md) House style" in text and "- (lesson for writers) Writers: cite" in text


async def test_top_k_and_the_token_budget_bound_what_is_recalled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = SimpleMemory()
    await mem.add(ENTRIES)
    long = "report " * 400
    await mem.add([MemoryEntry(long, "knowledge", 1, source="long.md")])
    text, retrieved = await make_recall(mem, _settings(tmp_path, monkeypatch, top_k=2))(1, "Writer-A", "writer", "write the report", None)
    assert len(retrieved) == 2 and len(text.splitlines()) == 2
    text, retrieved = await make_recall(mem, _settings(tmp_path, monkeypatch, top_k=10, token_budget=60))(1, "Writer-A", "writer", "report", None)
    assert estimate_tokens(text) <= 60 and retrieved
    assert len(text.splitlines()) == len(retrieved)
    for off in ({"top_k": 0}, {"token_budget": 0}):
        assert await make_recall(mem, _settings(tmp_path, monkeypatch, **off))(1, "Writer-A", "writer", "report", None) == ("", [])
    assert await make_recall(None, _settings(tmp_path, monkeypatch))(1, "Writer-A", "writer", "report", None) == ("", [])


async def test_project_work_is_recalled_only_in_its_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = SimpleMemory()
    await mem.add(ENTRIES)
    recall = make_recall(mem, _settings(tmp_path, monkeypatch, top_k=10))
    text, retrieved = await recall(1, "Writer-A", "writer", "report findings", 7)
    assert "- (earlier work in this project: T1 by Researcher-A) T1 report findings" in text
    assert any(r["scope"] == "project work" and r["source"] == "T1" for r in retrieved)
    text, _ = await recall(1, "Writer-A", "writer", "report findings", 8)
    assert "T1 report findings" not in text


def test_documents_are_chunked_at_paragraphs_and_sentences() -> None:
    assert chunk_text("  ") == []
    assert chunk_text("one\n\ntwo") == ["one\n\ntwo"]
    parts = chunk_text(("A sentence here. " * 100).strip(), size=300)
    assert all(len(p) <= 300 for p in parts) and all(p.endswith(".") for p in parts)
    assert " ".join(parts).split() == ("A sentence here. " * 100).split()
    assert chunk_text("x" * 650, size=300) == ["x" * 300, "x" * 300, "x" * 50]


def test_records_read_in_one_line() -> None:
    r = {"tasks_done": 4, "reviews": 5, "acceptance_rate": 0.8, "revisions_per_task": 0.25, "escalations": 1,
         "tokens_per_task": 1234.5, "avg_latency_ms": 950.2, "director_rating": 4.5}
    assert render_record(r) == ("4 tasks done, acceptance 80%, 0.25 revisions/task, 1 escalations, 1234 tokens/task, "
                                "950 ms/call, Director rating 4.5/5")
    assert render_record({"tasks_done": 0}) == "0 tasks done, 0 escalations"


async def test_recall_with_chroma_finds_by_meaning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_embedding: Any) -> None:
    mem = ChromaMemory(tmp_path / "chroma", embedding=local_embedding)
    try:
        await mem.add([
            MemoryEntry("Start every document with a short executive summary.", "lesson", 1, member="Writer-A", role="writer", source="evaluation"),
        ])
        await store_knowledge(mem, 1, "Bokashi bins ferment kitchen scraps indoors without odour.\n\n"
                                      "Quarterly revenue grew by four percent in the retail segment.", "notes.md")
        recall = make_recall(mem, _settings(tmp_path, monkeypatch, top_k=3))
        text, retrieved = await recall(1, "Writer-A", "writer", "how to compost food waste in a flat", None)
        assert retrieved[0]["scope"] == "own lesson"
        assert "Bokashi" in text
        assert "revenue" not in text or text.index("Bokashi") < text.index("revenue")
    finally:
        await mem.close()
