"""The index: embedder, FAISS vectors, versioned on-disk store, build, update and hot reload.

    rag index build --data ../shared/data/amazontitles/trn_sample.jsonl && rag index info

Modules (imported on demand; `import index` loads neither faiss nor torch):

* `index.embedder` - `load_embedder`, `SentenceTransformerEmbedder`, `HashingEmbedder`
* `index.vector`   - `uid_to_id`, `FaissIndex` (flat / hnsw / ivf)
* `index.metadata` - the SQLite row table of a version
* `index.store`    - `IndexStore`, `IndexSnapshot`, `LiveIndex`, verification, the writer lock
* `index.build`    - `build_index`, `update_index`
* `index.cli`      - the `rag index ...` commands
"""
