"""FAISS indexes over stable int64 ids derived from catalog uids.

    python -c "from index.vector import uid_to_id; print(uid_to_id('B000123'))"

Three index types (`index.type`; the default ``auto`` picks flat or a tuned ivf at build time,
index/autoindex.py):

* ``flat`` (default): exact inner-product search, `IndexFlatIP` inside `IndexIDMap2`.
* ``hnsw``: approximate graph search, `IndexHNSWFlat` (inner product) inside `IndexIDMap2`;
  `efConstruction` / `efSearch` from `index.hnsw_*`. FAISS cannot delete from an HNSW graph, so
  `remove` rebuilds the graph from the stored vectors (no re-embedding); pure additions are cheap.
* ``ivf``: `IndexIVFFlat` (inner product) trained on the first `64 * nlist` vectors; ids are stored
  natively in the inverted lists (no IDMap: IDMap's remove assumes a compacting sub-index).

Memory-mapping on load (`FaissIndex.load(path, mmap=True)`): flat and hnsw use FAISS's
`IO_FLAG_MMAP_IFC` (the flat vector codes are mapped, not copied); ivf uses `IO_FLAG_MMAP`
(the inverted lists are mapped). A mapped index is read-only; updates load a private copy.
Vectors must be L2-normalised float32 so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

ID_MASK = (1 << 63) - 1  # non-negative int64: FAISS uses -1 for "no result"


def uid_to_id(uid: str) -> int:
    """Stable FAISS id of a uid: the first 8 bytes of blake2b(uid), masked to 63 bits.

    The same uid gets the same id in every build, process and machine, so updates and deletes
    touch only their rows. Two distinct uids collide with probability about n^2 / 2^64
    (~1e-7 for the 1.3M-row catalog). The metadata table keeps `faiss_id` UNIQUE, and the builder
    resolves a collision by salting (`uid_to_id(uid + "\\x00" + n)`, see `index.build`); the chosen id
    is stored next to the uid in SQLite and reused by every later update, so it stays stable.
    """
    digest = hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ID_MASK


def _faiss() -> Any:
    import faiss  # heavy import kept out of `import index`

    return faiss


def _as_matrix(vectors: np.ndarray, dimension: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise ValueError(f"expected vectors of shape (n, {dimension}), got {vectors.shape}")
    return vectors


def _as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


class FaissIndex:
    """A FAISS index behind the `rag.types.VectorIndex` protocol, with save/load and type params."""

    TYPES = ("flat", "hnsw", "ivf")

    def __init__(
        self, raw: Any, index_type: str, dimension: int, params: dict[str, Any] | None = None
    ) -> None:
        if index_type not in self.TYPES:
            raise ValueError(f"index.type: {index_type!r} is not one of {', '.join(self.TYPES)}")
        self.raw = raw
        self.type = index_type
        self.dimension = int(dimension)
        self.params: dict[str, Any] = dict(params or {})
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # ivf: vectors waiting for training
        self._pending_rows = 0
        self.apply_search_params()

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, dimension: int, index_type: str = "flat", **params: Any) -> FaissIndex:
        """An empty index. params: hnsw_m, hnsw_ef_construction, hnsw_ef_search, ivf_nlist, ivf_nprobe, ivf_train_points."""
        faiss = _faiss()
        if index_type == "flat":
            raw = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
            kept: dict[str, Any] = {}
        elif index_type == "hnsw":
            m = int(params.get("hnsw_m", 32))
            inner = faiss.IndexHNSWFlat(dimension, m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = int(params.get("hnsw_ef_construction", 80))
            raw = faiss.IndexIDMap2(inner)
            kept = {
                "hnsw_m": m,
                "hnsw_ef_construction": inner.hnsw.efConstruction,
                "hnsw_ef_search": int(params.get("hnsw_ef_search", 64)),
            }
        elif index_type == "ivf":
            raw = None  # built at training time, once we know how many vectors there are
            nlist = int(params.get("ivf_nlist", 1024))
            kept = {
                "ivf_nlist": nlist,
                "ivf_nprobe": int(params.get("ivf_nprobe") or 16),
                "ivf_train_points": int(params.get("ivf_train_points", 0) or 64 * nlist),
            }
        else:
            raise ValueError(f"index.type: {index_type!r} is not one of {', '.join(cls.TYPES)}")
        return cls(raw, index_type, dimension, kept)

    @classmethod
    def from_config(cls, dimension: int, config: Any) -> FaissIndex:
        """An empty index from an `IndexConfig`; `auto` starts flat (index/autoindex.py decides at the end)."""
        return cls.create(
            dimension,
            "flat" if config.type == "auto" else config.type,
            hnsw_m=config.hnsw_m,
            hnsw_ef_construction=config.hnsw_ef_construction,
            hnsw_ef_search=config.hnsw_ef_search,
            ivf_nlist=config.ivf_nlist,
            ivf_nprobe=config.ivf_nprobe,
            ivf_train_points=getattr(config, "ivf_train_points", 0),
        )

    def apply_search_params(self, **overrides: Any) -> None:
        """Set efSearch (hnsw) or nprobe (ivf): from the stored params, or overridden at open time."""
        self.params.update({k: v for k, v in overrides.items() if v is not None and k in self.params})
        if self.raw is None:
            return
        faiss = _faiss()
        if self.type == "hnsw":
            faiss.downcast_index(self.raw.index).hnsw.efSearch = int(self.params.get("hnsw_ef_search", 64))
        elif self.type == "ivf":
            self.raw.nprobe = int(self.params.get("ivf_nprobe", 16))

    # ------------------------------------------------------------------ ivf training

    def _train_ivf(self, sample: np.ndarray) -> Any:
        """Train a fresh IVF index on `sample`; it becomes `self.raw` and is returned."""
        faiss = _faiss()
        # k-means needs points >= nlist; FAISS warns below 39 points per list, so shrink nlist
        # for small catalogs rather than build a degenerate index. The manifest records the value used.
        nlist = max(1, min(int(self.params["ivf_nlist"]), len(sample) // 39 or 1))
        quantizer = faiss.IndexFlatIP(self.dimension)
        raw = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        raw.train(sample)  # the FAISS wrapper keeps `quantizer` alive as a referenced object
        self.raw = raw
        self.params["ivf_nlist_used"] = nlist
        self.apply_search_params()
        return raw

    def flush(self) -> None:
        """ivf: train on what was buffered so far (called before save/search of a small index)."""
        if self.type == "ivf" and self.raw is None and self._pending:
            ids = np.concatenate([p[0] for p in self._pending])
            vectors = np.concatenate([p[1] for p in self._pending])
            self._pending, self._pending_rows = [], 0
            self._train_ivf(vectors).add_with_ids(vectors, ids)

    # ------------------------------------------------------------------ VectorIndex protocol

    @property
    def ntotal(self) -> int:
        if self.raw is None:
            return self._pending_rows
        return int(self.raw.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = _as_ids(ids)
        vectors = _as_matrix(vectors, self.dimension)
        if len(ids) != len(vectors):
            raise ValueError(f"add: {len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        if self.type == "ivf" and self.raw is None:
            # buffer until there are enough vectors to train the coarse quantizer
            self._pending.append((ids, vectors))
            self._pending_rows += len(ids)
            if self._pending_rows >= int(self.params["ivf_train_points"]):
                self.flush()
            return
        self.raw.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = _as_ids(ids)
        if not len(ids):
            return 0
        self.flush()
        faiss = _faiss()
        if self.type == "hnsw":
            return self._rebuild_without(ids)
        return int(self.raw.remove_ids(faiss.IDSelectorBatch(ids)))

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """hnsw: FAISS cannot delete graph nodes, so rebuild the graph from the stored vectors."""
        faiss = _faiss()
        all_ids, vectors = self.export()
        keep = ~np.isin(all_ids, ids)
        fresh = FaissIndex.create(self.dimension, "hnsw", **self.params)
        fresh.add(all_ids[keep], vectors[keep])
        self.raw = fresh.raw
        self.apply_search_params()
        del faiss
        return int((~keep).sum())

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every stored row (flat and hnsw; used to rebuild a graph)."""
        faiss = _faiss()
        if self.type == "ivf":
            raise NotImplementedError("export is not supported for ivf indexes")
        inner = faiss.downcast_index(self.raw.index)
        ids = faiss.vector_to_array(self.raw.id_map).astype(np.int64)
        vectors = (
            inner.reconstruct_n(0, inner.ntotal)
            if inner.ntotal
            else np.zeros((0, self.dimension), np.float32)
        )
        return ids, np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each of shape (n, k); missing results have id -1 and score -inf."""
        vectors = _as_matrix(vectors, self.dimension)
        k = int(k)
        if k <= 0:
            raise ValueError(f"search: k must be > 0, got {k}")
        if self.raw is None:
            self.flush()
        if self.raw is None or self.raw.ntotal == 0:
            return (
                np.full((len(vectors), k), -np.inf, dtype=np.float32),
                np.full((len(vectors), k), -1, dtype=np.int64),
            )
        scores, ids = self.raw.search(vectors, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write with faiss.write_index (FAISS's own format, no pickle)."""
        self.flush()
        if self.raw is None:  # an empty ivf index: keep an untrained one so the file exists
            faiss = _faiss()
            self.raw = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dimension), self.dimension, 1, faiss.METRIC_INNER_PRODUCT
            )
        _faiss().write_index(self.raw, str(path))

    @classmethod
    def _untrained_ivf(cls, dimension: int, params: dict[str, Any]) -> FaissIndex:
        return cls(None, "ivf", dimension, params)

    @classmethod
    def load(
        cls,
        path: str | Path,
        index_type: str,
        dimension: int,
        params: dict[str, Any] | None = None,
        *,
        mmap: bool = True,
    ) -> FaissIndex:
        faiss = _faiss()
        flags = 0
        if mmap:
            flags = faiss.IO_FLAG_MMAP if index_type == "ivf" else faiss.IO_FLAG_MMAP_IFC
        raw = faiss.read_index(str(path), flags)
        if index_type == "ivf" and not raw.is_trained:
            raw = None  # an ivf index saved while empty: train when rows arrive
            params = dict(params or {})
            return cls._untrained_ivf(dimension, params)
        if int(raw.d) != int(dimension):
            raise ValueError(f"{path}: FAISS dimension {raw.d} differs from the manifest's {dimension}")
        return cls(raw, index_type, dimension, params)
