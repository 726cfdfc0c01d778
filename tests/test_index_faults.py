"""Crash safety and concurrency of the index store.

    .venv/bin/python -m pytest tests/test_index_faults.py -q            # 20 SIGKILLs + threads
    .venv/bin/python -m pytest tests/test_index_faults.py -q -m slow    # 100 SIGKILLs

A worker process builds, updates (delta segments on top of deltas) and compacts an index in a
loop and is killed with SIGKILL after a random delay; every version it writes holds exactly
`rows_for(g)` rows, all carrying the marker `gen=g`.
After each kill the store must open (verified, sha256 included) on a whole version whose counts
match, and the next write must clean up what the killed writer left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from index.build import build_index, update_index
from index.embedder import HashingEmbedder
from index.store import MANIFEST_FILE, IndexStore, LiveIndex
from index.testing import hashing_config, product_row, write_catalog

REPO = Path(__file__).resolve().parents[1]


def rows_for(gen: int) -> int:
    return 120 + 15 * (gen % 5)


def _gen_of(row) -> int:
    return int(row.content.rsplit("gen=", 1)[1])


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from index.build import build_index, update_index
    from index.store import IndexStore
    from index.testing import hashing_config, write_catalog

    def rows_for(gen):
        return 120 + 15 * (gen % 5)

    root, work = Path(sys.argv[1]), Path(sys.argv[2])
    config = hashing_config(root)
    store = IndexStore.from_config(config)
    print("ready", flush=True)
    while True:
        if not store.has_current():
            gen = 0
        else:
            snap = store.open_current(checksums=False)
            gen = int(snap.get_by_uid("P0000000").content.rsplit("gen=", 1)[1]) + 1
            old = snap.rows
            snap.close()
        n = rows_for(gen)
        # even generations change titles (re-embedding), odd ones only descriptions
        data = write_catalog(work / f"gen{gen}.jsonl", n, marker=f"gen={gen}", title_variant=gen % 2)
        # a cycle of 6: build, two deltas (the second on top of the first), a compacting update, two deltas
        if gen % 6 == 0:
            build_index(config, [data], progress=False)
        else:
            update_index(config, [data], [f"P{i:07d}" for i in range(n, old)], progress=False,
                         compact=True if gen % 6 == 3 else None)
        print("done", gen, flush=True)
    """
)


def _check_store(root: Path) -> tuple[int, bool, bool]:
    """The current version opens, is whole and self-consistent; returns (gen, had_leftovers, has_delta)."""
    store = IndexStore(root)
    snap = store.open_current()  # verifies sizes, sha256 and FAISS == SQLite == manifest counts
    gens = {_gen_of(row) for row in snap.iter_rows()}
    assert len(gens) == 1, f"version {snap.version} mixes generations {sorted(gens)}"
    gen = gens.pop()
    assert snap.rows == rows_for(gen) == snap.index.ntotal == len(list(snap.iter_rows()))
    has_delta = "delta" in snap.manifest.get("segments", {})
    snap.close()
    assert store.verify().ok
    leftovers = [p for p in store.versions_dir.iterdir() if not (p / MANIFEST_FILE).exists()]
    return gen, bool(leftovers), has_delta


def _kill_loop(tmp_path: Path, kills: int, seed: int) -> dict[str, int]:
    root, work = tmp_path / "index", tmp_path / "work"
    work.mkdir()
    config = hashing_config(root)
    build_index(config, [write_catalog(work / "seed.jsonl", rows_for(0), marker="gen=0")], progress=False)
    rnd = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stats = {"kills": 0, "with_leftovers": 0, "generations": 0, "on_delta": 0}
    last_gen = 0
    cycle = 0.5  # seconds one write takes; measured below, since it varies with the machine's load
    for attempt in range(kills):
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(work)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(tmp_path),
        )
        try:
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
            if attempt % 3 == 0:
                # every third run lets one write finish first (so the store moves on between kills)
                # and re-measures how long a write takes, to spread the kills over a whole write
                t0 = time.perf_counter()
                assert worker.stdout.readline().startswith("done"), worker.stderr.read()
                cycle = time.perf_counter() - t0
            time.sleep(rnd.uniform(0.0, 1.2 * cycle))
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker.stdout.close()
            worker.stderr.close()
        assert worker.returncode == -signal.SIGKILL, "the worker stopped by itself: " + str(worker.returncode)
        stats["kills"] += 1
        gen, leftovers, has_delta = _check_store(root)
        stats["on_delta"] += has_delta
        assert gen >= last_gen
        stats["generations"] += gen - last_gen
        last_gen = gen
        stats["with_leftovers"] += leftovers
        # the next write cleans up: a no-op update (same rows) under the lock
        update_index(config, [], ["not-a-uid"], progress=False)
        store = IndexStore(root)
        assert all((p / MANIFEST_FILE).exists() for p in store.versions_dir.iterdir())
        assert not list(root.glob(".current.tmp-*"))
        assert _check_store(root)[0] == gen
    return stats


def test_sigkill_during_build_and_update_never_breaks_the_index(tmp_path):
    stats = _kill_loop(tmp_path, kills=20, seed=1234)
    print(stats)
    assert stats["kills"] == 20
    assert stats["generations"] > 0  # the worker did get writes done between kills
    assert stats["on_delta"] > 0  # some kills landed on a version with a delta segment


@pytest.mark.slow
def test_sigkill_100_times(tmp_path):
    stats = _kill_loop(tmp_path, kills=100, seed=99)
    print(stats)
    assert stats["generations"] > 0 and stats["with_leftovers"] > 0


def test_queries_from_threads_while_updates_land(tmp_path):
    """Every query sees one whole version: all hits carry the same gen and the row count of that gen."""
    config = hashing_config(tmp_path / "index", keep_versions=2)  # gc runs under the readers' feet too
    build_index(config, [write_catalog(tmp_path / "g0.jsonl", rows_for(0), marker="gen=0")], progress=False)
    live = LiveIndex(IndexStore.from_config(config), check_interval_s=0)
    embedder = HashingEmbedder(64)
    queries = embedder.embed([product_row(i)["title"] for i in range(0, 120, 7)])
    errors: list[BaseException] = []
    seen_versions: set[str] = set()
    counts = {"queries": 0}
    stop = threading.Event()

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                snap = live.snapshot()
                _scores, ids = snap.search(queries[rnd.randrange(len(queries))], 10)
                rows = snap.get_rows(ids[0])
                assert all(r is not None for r in rows), "an id without its row"
                gens = {_gen_of(r) for r in rows}
                assert len(gens) == 1, f"mixed generations {gens}"
                assert snap.rows == rows_for(gens.pop())
                seen_versions.add(snap.version)
                counts["queries"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        previous = rows_for(0)
        for gen in range(1, 9):
            n = rows_for(gen)
            data = write_catalog(tmp_path / f"g{gen}.jsonl", n, marker=f"gen={gen}", title_variant=gen % 3)
            # deltas on top of deltas, with one compaction in the middle
            update_index(
                config,
                [data],
                [f"P{i:07d}" for i in range(n, previous)],
                progress=False,
                compact=True if gen == 5 else None,
            )
            previous = n
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert counts["queries"] > 50
    assert len(seen_versions) >= 3  # the readers really did switch versions while running
