"""The agency's long-term memory: knowledge, lessons and project work.

``ChromaMemory`` implements the :class:`agency.ports.Memory` port on Chroma: an
embedded ``PersistentClient`` under the data directory by default, or a Chroma
server (``chromadb.HttpClient``) when ``memory.server_url`` is set. Each agency
has one collection per kind (``a{agency_id}_knowledge``, ``a{agency_id}_lesson``,
``a{agency_id}_work``), always opened with the configured embedding function and
the cosine space. Every entry carries its metadata (``agency_id``,
``project_id``, ``stream``, ``member``, ``role``, ``kind``, ``source``,
``created_at`` as ISO text and ``created_ts`` as epoch seconds) and searches can
filter on any of it.

Ids are deterministic (a uuid5 of the entry's kind, agency, project, stream,
member, source and text), so adding the same entry again, e.g. after a crash and
restart, updates it instead of storing a duplicate.

``SimpleMemory`` is a fake for tests that do not need embeddings: in-process,
keyword overlap instead of vectors, same port, same ids, same filters.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import urlparse

from agency.errors import AgencyError, SettingsError
from agency.ports import Clock, MemoryEntry, MemoryHit, MemoryKind, SystemClock

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Metadata

    from agency.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "ChromaMemory",
    "MemoryStoreError",
    "SimpleMemory",
    "collection_name",
    "entry_id",
    "entry_metadata",
    "memory_from_settings",
    "normalise_where",
]

KINDS: tuple[MemoryKind, ...] = get_args(MemoryKind)
DEFAULT_PATH = Path(".ateams") / "chroma"
_ID_NAMESPACE = uuid.UUID("6f1d3b0e-7a7c-4f43-9c55-a7ea3a3f0e11")
# friendly names accepted in ``where`` filters
_ALIASES = {"agency": "agency_id", "project": "project_id", "time": "created_ts", "type": "kind"}


class MemoryStoreError(AgencyError):
    """The memory store cannot be opened or used as configured."""


# --------------------------------------------------------------------------
# pure helpers, shared by both implementations


def collection_name(agency_id: int, kind: MemoryKind) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown memory kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"a{agency_id}_{kind}"


def _namespace(value: str) -> str:
    """A collection-name-safe deployment prefix (Chroma: letters, digits, ``._-``; names of 3-63 characters)."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", value or "").strip("-")[:24]
    return cleaned


def entry_id(entry: MemoryEntry) -> str:
    """The deterministic id of an entry: the same entry always gets the same id."""
    parts = [
        entry.kind,
        str(entry.agency_id),
        "" if entry.project_id is None else str(entry.project_id),
        entry.stream or "",
        entry.member or "",
        entry.source or "",
        entry.text,
    ]
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def entry_metadata(entry: MemoryEntry, now: datetime) -> dict[str, Any]:
    """The metadata stored with an entry; ``None`` values are left out (Chroma cannot hold them)."""
    created = _utc(entry.created_at or now)
    meta: dict[str, Any] = {
        "agency_id": int(entry.agency_id),
        "project_id": entry.project_id,
        "stream": entry.stream,
        "member": entry.member,
        "role": entry.role,
        "kind": entry.kind,
        "source": entry.source,
        "created_at": created.isoformat(),
        "created_ts": created.timestamp(),
    }
    return {k: v for k, v in meta.items() if v is not None}


def _to_epoch(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).timestamp()
    if isinstance(value, dict):
        return {op: _to_epoch(v) for op, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_epoch(v) for v in value]
    return value


def normalise_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """Turn a friendly filter into a Chroma ``where``.

    ``{"member": "Researcher-A", "role": "researcher"}`` becomes an ``$and`` of
    equalities; a list or tuple value becomes ``$in``; a value that is already an
    operator dict (``{"$gte": ...}``) and top-level ``$and``/``$or`` pass through.
    ``project``/``agency``/``time`` are accepted for ``project_id``/``agency_id``/
    ``created_ts``; a datetime (or a ``created_at`` filter) compares on
    ``created_ts``. ``None`` values are ignored: Chroma cannot match a missing key.
    """
    if not where:
        return None
    clauses: list[dict[str, Any]] = []
    for key, value in where.items():
        if key in ("$and", "$or"):
            subs = [s for s in map(normalise_where, value) if s]
            if len(subs) == 1:
                clauses.append(subs[0])
            elif subs:
                clauses.append({key: subs})
            continue
        if value is None:
            continue
        key = _ALIASES.get(key, key)
        if key == "created_at" and (isinstance(value, (datetime, dict))):
            key = "created_ts"
        if key == "created_ts":
            value = _to_epoch(value)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            clauses.append({key: {"$in": items}} if len(items) != 1 else {key: items[0]})
        elif isinstance(value, dict):
            clauses.append({key: value})
        else:
            clauses.append({key: value})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _kinds_for(kinds: Iterable[MemoryKind] | None, where: dict[str, Any] | None) -> list[MemoryKind]:
    """The collections to search: ``kinds``, narrowed by a plain ``kind`` filter if any."""
    selected = list(dict.fromkeys(kinds)) if kinds else list(KINDS)
    for k in selected:
        if k not in KINDS:
            raise ValueError(f"unknown memory kind {k!r}; expected one of {', '.join(KINDS)}")
    if where:
        wanted = where.get("kind", where.get("type"))
        if isinstance(wanted, str):
            selected = [k for k in selected if k == wanted]
        elif isinstance(wanted, (list, tuple, set, frozenset)):
            selected = [k for k in selected if k in wanted]
    return selected


def _dedupe(entries: list[MemoryEntry]) -> tuple[list[str], dict[str, MemoryEntry]]:
    """Ids in input order, and the last entry for each id (a batch may not repeat an id)."""
    ids = []
    latest: dict[str, MemoryEntry] = {}
    for e in entries:
        if not isinstance(e.text, str) or not e.text.strip():
            raise ValueError("a memory entry needs non-blank text")
        if e.kind not in KINDS:
            raise ValueError(f"unknown memory kind {e.kind!r}; expected one of {', '.join(KINDS)}")
        i = entry_id(e)
        ids.append(i)
        latest[i] = e
    return ids, latest


# --------------------------------------------------------------------------
# Chroma


def _parse_server_url(url: str) -> tuple[str, int, bool]:
    """``http://host:8000`` -> (host, port, ssl). A bare ``host:port`` means http."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingsError(f"memory.server_url must look like http://host:8000, not {url!r}")
    if parsed.path not in ("", "/"):
        raise SettingsError(f"memory.server_url must not have a path: {url!r}")
    ssl = parsed.scheme == "https"
    try:
        port = parsed.port or (443 if ssl else 8000)
    except ValueError as e:
        raise SettingsError(f"memory.server_url has an invalid port: {url!r}") from e
    return parsed.hostname, port, ssl


class ChromaMemory:
    """The :class:`agency.ports.Memory` port on Chroma.

    ``path``: the folder of the embedded database (default ``.ateams/chroma``);
    ignored when ``server_url`` is given. ``embedding``: a chroma embedding
    function; default :class:`agency.embeddings.LocalMiniLMEmbedding`.

    The client is opened on first use, in a worker thread; every Chroma call runs
    in ``asyncio.to_thread`` so that the event loop never waits on it. Writes
    are serialised by a lock; reads run concurrently. A failing store (server
    down, corrupt files) raises :class:`MemoryStoreError`; a bad argument raises
    ``ValueError``. ``request_timeout`` bounds each HTTP request in server mode.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        server_url: str | None = None,
        embedding: Any = None,
        clock: Clock | None = None,
        request_timeout: float | None = 30.0,
        namespace: str = "",
    ) -> None:
        """``namespace``: the deployment's prefix for collection names, so that several deployments (each
        with its own database, whose agency ids repeat) can share one Chroma server without seeing each
        other's memories. Empty: the names of older versions (a store of this deployment alone)."""
        self.namespace = _namespace(namespace)
        if embedding is None:
            from agency.embeddings import LocalMiniLMEmbedding

            embedding = LocalMiniLMEmbedding()
        self.embedding = embedding
        self.server_url = server_url
        self.path = None if server_url else Path(path) if path is not None else DEFAULT_PATH
        self._server = _parse_server_url(server_url) if server_url else None
        self._clock: Clock = clock or SystemClock()
        self.request_timeout = request_timeout
        self._client_obj: ClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()  # client, collection cache, writes

    def __repr__(self) -> str:
        where = self.server_url or str(self.path)
        return f"ChromaMemory({where!r}, embedding={self.embedding.name()!r})"

    # --- plumbing (worker thread) ------------------------------------------
    def _client(self) -> ClientAPI:
        with self._lock:
            if self._client_obj is None:
                import chromadb
                from chromadb.config import Settings as ChromaSettings

                settings = ChromaSettings(anonymized_telemetry=False)
                if self._server is not None:
                    host, port, ssl = self._server
                    log.info("memory: Chroma server at %s", self.server_url)
                    try:
                        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
                    except Exception as e:
                        raise MemoryStoreError(
                            f"Cannot reach the Chroma server at {self.server_url} (memory.server_url): {e}"
                        ) from e
                    # chroma's HTTP client waits forever by default; bound every request
                    session = getattr(getattr(client, "_server", None), "_session", None)
                    if session is not None and self.request_timeout:
                        import httpx

                        session.timeout = httpx.Timeout(self.request_timeout)
                    self._client_obj = client
                else:
                    assert self.path is not None
                    self.path.mkdir(parents=True, exist_ok=True)
                    log.info("memory: Chroma database in %s", self.path)
                    self._client_obj = chromadb.PersistentClient(path=str(self.path), settings=settings)
            return self._client_obj

    def _name(self, agency_id: int, kind: MemoryKind) -> str:
        return f"{self.namespace}_{collection_name(agency_id, kind)}" if self.namespace else collection_name(agency_id, kind)

    def _collection(self, agency_id: int, kind: MemoryKind) -> Collection:
        name = self._name(agency_id, kind)
        coll = self._collections.get(name)
        if coll is not None:
            return coll
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                try:
                    coll = self._client().get_or_create_collection(
                        name,
                        embedding_function=self.embedding,
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata={"agency_id": int(agency_id), "kind": kind},
                    )
                except ValueError as e:
                    if "conflict" in str(e).lower():
                        raise MemoryStoreError(
                            f"The memory collection {name} was built with another embedding model than "
                            f"{self.embedding.name()!r}; vectors from different models do not compare. Use the "
                            "memory.embedding it was built with, or a fresh data directory."
                        ) from e
                    raise
                self._collections[name] = coll
            return coll

    def _retrying(self, agency_id: int, kind: MemoryKind, fn: Callable[[Collection], Any]) -> Any:
        """Run ``fn`` on the collection; once more if it was deleted behind our back."""
        from chromadb.errors import NotFoundError

        try:
            return fn(self._collection(agency_id, kind))
        except NotFoundError:
            with self._lock:
                self._collections.pop(self._name(agency_id, kind), None)
            return fn(self._collection(agency_id, kind))

    def _embed(self, texts: list[str]) -> list[Any]:
        return list(self.embedding(texts))

    def _add_sync(self, entries: list[MemoryEntry]) -> list[str]:
        ids, latest = _dedupe(entries)
        now = self._clock.now()
        groups: dict[tuple[int, MemoryKind], list[tuple[str, MemoryEntry]]] = {}  # one per collection
        for i, e in latest.items():
            groups.setdefault((int(e.agency_id), e.kind), []).append((i, e))
        for (agency_id, kind), items in groups.items():
            texts = [e.text for _, e in items]
            vectors = self._embed(texts)
            metas: list[Metadata] = [entry_metadata(e, now) for _, e in items]
            batch = max(1, min(5000, self._client().get_max_batch_size()))
            for s in range(0, len(items), batch):
                chunk = slice(s, s + batch)
                chunk_ids = [i for i, _ in items[chunk]]

                # called right away (through _retrying), but bound to this chunk's values all the same
                def upsert(c: Collection, ids: list[str] = chunk_ids, embeddings: list[Any] = vectors[chunk],
                           documents: list[str] = texts[chunk], metadatas: list[Metadata] = metas[chunk]) -> None:
                    c.upsert(ids=ids, embeddings=embeddings, documents=documents, metadatas=metadatas)

                with self._lock:
                    self._retrying(agency_id, kind, upsert)
            log.debug("memory: upserted %d %s entries for agency %s", len(items), kind, agency_id)
        return ids

    def _search_sync(
        self,
        agency_id: int,
        query: str,
        kinds: list[MemoryKind],
        where: dict[str, Any] | None,
        limit: int,
    ) -> list[MemoryHit]:
        if not kinds or limit <= 0 or not query.strip():
            return []
        vector = self.embedding.embed_query([query])[0]
        hits: list[MemoryHit] = []
        for kind in kinds:

            def run(c: Collection) -> Any:
                return c.query(
                    query_embeddings=[vector],
                    n_results=limit,
                    where=where,
                    include=["documents", "metadatas", "distances"],
                )

            res = self._retrying(agency_id, kind, run)
            ids = res["ids"][0] if res["ids"] else []
            docs = (res.get("documents") or [[]])[0] or []
            metas = (res.get("metadatas") or [[]])[0] or []
            dists = (res.get("distances") or [[]])[0] or []
            for i, doc, meta, dist in zip(ids, docs, metas, dists):
                hits.append(
                    MemoryHit(id=i, text=doc or "", kind=kind, distance=float(dist), metadata=dict(meta or {}))
                )
        hits.sort(key=lambda h: (h.distance, h.id))
        return hits[:limit]

    def _count_sync(self, agency_id: int, kind: MemoryKind | None) -> int:
        kinds = [kind] if kind else list(KINDS)
        return sum(int(self._retrying(agency_id, k, lambda c: c.count())) for k in kinds)

    def _delete_agency_sync(self, agency_id: int) -> int:
        from chromadb.errors import NotFoundError

        removed = 0
        with self._lock:
            for kind in KINDS:
                name = self._name(agency_id, kind)
                self._collections.pop(name, None)
                try:
                    self._client().delete_collection(name)
                    removed += 1
                except (NotFoundError, ValueError):
                    pass
        return removed

    def _close_sync(self) -> None:
        with self._lock:
            client, self._client_obj = self._client_obj, None
            self._collections.clear()
        if client is not None:
            session = getattr(getattr(client, "_server", None), "_session", None)
            client.close()  # type: ignore[attr-defined]
            if session is not None:  # chroma's close() leaves the HTTP connections open
                session.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a Chroma call in a worker thread; store failures become MemoryStoreError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (AgencyError, ValueError, TypeError):
            raise
        except Exception as e:
            import httpx
            from chromadb.errors import ChromaError

            if isinstance(e, (ChromaError, httpx.HTTPError, OSError)):
                where = self.server_url or str(self.path)
                raise MemoryStoreError(f"The memory store at {where} failed: {type(e).__name__}: {e}") from e
            raise

    async def close(self) -> None:
        """Release the client (database files, HTTP connections). Using the memory again reopens it."""
        await asyncio.to_thread(self._close_sync)

    async def __aenter__(self) -> ChromaMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the port ------------------------------------------------------------
    async def add(self, entries: list[MemoryEntry]) -> list[str]:
        """Store entries (an upsert: the same entry twice is stored once); returns their ids in order."""
        if not entries:
            return []
        return await self._run(self._add_sync, list(entries))

    async def search(
        self,
        agency_id: int,
        query: str,
        *,
        kinds: list[MemoryKind] | None = None,
        where: dict[str, Any] | None = None,
        limit: int = 5,
    ) -> list[MemoryHit]:
        """The ``limit`` nearest entries across ``kinds`` (all by default), nearest first.

        ``where`` filters on metadata, e.g. ``{"member": "Researcher-A"}``,
        ``{"role": "researcher", "project_id": 7}``, ``{"created_ts": {"$gte": t}}``;
        see :func:`normalise_where`. Distances are cosine distances (0 = same).
        """
        selected = _kinds_for(kinds, where)
        return await self._run(self._search_sync, int(agency_id), query, selected, normalise_where(where), int(limit))

    async def count(self, agency_id: int, kind: MemoryKind | None = None) -> int:
        return await self._run(self._count_sync, int(agency_id), kind)

    async def delete_agency(self, agency_id: int) -> int:
        """Forget everything of one agency (e.g. the bot left the server); returns collections removed."""
        return await self._run(self._delete_agency_sync, int(agency_id))


def memory_from_settings(settings: Settings, *, namespace: str | None = None) -> ChromaMemory:
    """Build the memory the settings describe (``[memory]``, ``data_dir``, ``llm.base_url``); ``namespace``
    overrides ``memory.namespace`` (the composition root passes the deployment's own with a server)."""
    from agency.embeddings import make_embedding

    m = settings.memory
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    embedding = make_embedding(
        m.embedding, openai_model=m.openai_embedding_model, base_url=settings.llm.base_url, api_key=key
    )
    return ChromaMemory(Path(settings.data_dir) / "chroma", server_url=m.server_url, embedding=embedding,
                        namespace=namespace if namespace is not None else m.namespace)


# --------------------------------------------------------------------------
# the fake

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def _matches(meta: dict[str, Any], where: dict[str, Any] | None) -> bool:
    """Evaluate a (normalised) Chroma ``where`` against one metadata dict."""
    if not where:
        return True
    for key, cond in where.items():
        if key == "$and":
            if not all(_matches(meta, w) for w in cond):
                return False
        elif key == "$or":
            if not any(_matches(meta, w) for w in cond):
                return False
        elif isinstance(cond, dict):
            for op, arg in cond.items():
                if op not in _CMP:
                    raise ValueError(f"unsupported filter operator {op!r}")
                if key not in meta and op not in ("$ne", "$nin"):
                    return False
                if not _CMP[op](meta.get(key), arg):
                    return False
        elif meta.get(key) != cond:
            return False
    return True


class SimpleMemory:
    """A fake :class:`agency.ports.Memory` for tests: in-process, no embeddings.

    The distance is ``1 - (shared words / query words)``: an entry sharing no
    word with the query is not returned. Ids, metadata and filters behave as in
    :class:`ChromaMemory`; the ranking is only a crude stand-in for semantic
    search.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._rows: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}  # collection -> id -> (text, meta)

    async def add(self, entries: list[MemoryEntry]) -> list[str]:
        ids, latest = _dedupe(list(entries))
        now = self._clock.now()
        for i, e in latest.items():
            self._rows.setdefault(collection_name(e.agency_id, e.kind), {})[i] = (e.text, entry_metadata(e, now))
        return ids

    async def search(
        self,
        agency_id: int,
        query: str,
        *,
        kinds: list[MemoryKind] | None = None,
        where: dict[str, Any] | None = None,
        limit: int = 5,
    ) -> list[MemoryHit]:
        q = _words(query)
        if not q or limit <= 0:
            return []
        flt = normalise_where(where)
        hits = []
        for kind in _kinds_for(kinds, where):
            for i, (text, meta) in self._rows.get(collection_name(agency_id, kind), {}).items():
                shared = len(q & _words(text))
                if shared and _matches(meta, flt):
                    hits.append(MemoryHit(i, text, kind, 1.0 - shared / len(q), dict(meta)))
        hits.sort(key=lambda h: (h.distance, h.id))
        return hits[:limit]

    async def count(self, agency_id: int, kind: MemoryKind | None = None) -> int:
        kinds = [kind] if kind else list(KINDS)
        return sum(len(self._rows.get(collection_name(agency_id, k), {})) for k in kinds)

    async def close(self) -> None:
        return None

    async def delete_agency(self, agency_id: int) -> int:
        removed = 0
        for kind in KINDS:
            if self._rows.pop(collection_name(agency_id, kind), None) is not None:
                removed += 1
        return removed
