"""Two deployments (two databases, whose agency ids both start at 1) on one Chroma store: neither recalls the
other's memories, because each names its collections with its own deployment id."""
from __future__ import annotations

from pathlib import Path

from agency.db.session import Database
from agency.memory import ChromaMemory
from agency.ports import MemoryEntry
from agency.settings import load_settings
from agency.wiring import memory_namespace


async def _namespace(tmp: Path, name: str, monkeypatch) -> str:  # noqa: ANN001
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp / "absent.toml"))
    settings = load_settings(data_dir=tmp / name, memory={"server_url": "http://127.0.0.1:8000"})
    db = Database.from_settings(settings)
    try:
        await db.upgrade()
        first = await memory_namespace(settings, db)
        assert await memory_namespace(settings, db) == first  # stable: stored in the database
        return first
    finally:
        await db.dispose()


async def test_two_deployments_on_one_store_never_see_each_other(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    ns_a, ns_b = await _namespace(tmp_path, "a", monkeypatch), await _namespace(tmp_path, "b", monkeypatch)
    assert ns_a and ns_b and ns_a != ns_b
    shared = tmp_path / "one-chroma"  # one store for both, as one Chroma server would be
    a = ChromaMemory(shared, namespace=ns_a)
    b = ChromaMemory(shared, namespace=ns_b)
    try:
        await a.add([MemoryEntry(text="Deployment A's pricing secret: espresso at 2.80", kind="knowledge", agency_id=1)])
        await b.add([MemoryEntry(text="Deployment B's supplier list for croissants", kind="knowledge", agency_id=1)])
        hits_b = await b.search(1, "espresso pricing", limit=5)
        hits_a = await a.search(1, "croissant suppliers", limit=5)
        assert all("Deployment B" in h.text for h in hits_b) and hits_b
        assert all("Deployment A" in h.text for h in hits_a) and hits_a
        assert await a.count(1) == 1 and await b.count(1) == 1
    finally:
        await a.close()
        await b.close()


async def test_a_local_store_keeps_the_names_of_older_versions(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    settings = load_settings(data_dir=tmp_path / "d")
    db = Database.from_settings(settings)
    try:
        await db.upgrade()
        assert await memory_namespace(settings, db) == ""  # its own store: the memories it has stay where they are
    finally:
        await db.dispose()
