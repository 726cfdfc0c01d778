"""Benchmark: the project's defaults against the LangChain recipe, same model, same data, one run.

    .venv/bin/python benchmarks/bench_vs_langchain.py --out results/bench_vs_langchain.json   # 20,000 rows
    .venv/bin/python benchmarks/bench_vs_langchain.py --rows 2000 --questions 100              # quick

The two sides:

* **project**: whatever `load_config(None)` gives when it runs (embedding backend, index type, retrieval
  fusion: the defaults as shipped; they are recorded in the JSON), through the library calls the CLI
  and the server make: `index.build.build_index` (catalog reading and cleaning, SQLite, BM25, FAISS,
  the version written to disk), `rag.retrieval.Retriever.search(question, k=5)` (dense + lexical
  fusion, as served) and the update as `POST /v1/index/update` runs it (`update_index` with the
  serving embedder, then the live index reloaded);
* **langchain**: the peers' recipe, `langchain_community.vectorstores.FAISS.from_texts(titles,
  HuggingFaceEmbeddings(model_name=<the bundled MiniLM's directory>), metadatas=[{"uid": ...}],
  ids=uids)`, `similarity_search(question, k=5)`, and an update as `delete(ids)` + `add_texts(...)`.
  It is kept in memory: saving it (`save_local`) writes a pickle, which this project does not do,
  and would only add to its times.

Each side runs in its own subprocess (so peak RSS is its own), driven stage by stage by this process
over a pipe, so the stages are interleaved: build (project, then langchain), then the questions in
alternating blocks of 50, then the update. Data: `--rows` synthetic rows of real length
(`rag.synthetic`, the catalog `rag synth` writes); questions: `--questions` title variants generated
from it (`rag.evaluation.questions.generate_questions`, kinds exact/lowercase/truncated/typo/template);
the update: 1% of the rows (every 100th) with a changed title. Prints the figures and the ratios
(project / langchain: below 1 means the project is faster or smaller), the load average before and
after; `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_vmhwm_mb, write_result  # noqa: E402 - after the path

K = 5
BLOCK = 50


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


# --------------------------------------------------------------------------- the two sides (in a child)


class ProjectSide:
    def __init__(self, workdir: Path, overrides: list[str]) -> None:
        from rag.config import load_config

        self.config = load_config(None, [*overrides, f"index.path={workdir / 'index'}"])
        self.retriever: Any = None

    def build(self, data: str) -> dict[str, Any]:
        from index.build import build_index

        report = build_index(self.config, [data], progress=False)
        return {
            "rows": report.rows,
            "embed_seconds": round(report.embed_seconds, 2),
            "index_type": report.index_type,
        }

    def open(self) -> None:
        from rag.retrieval import Retriever

        self.retriever = Retriever.from_config(self.config)

    def search(self, question: str) -> list[str]:
        return [hit.row.uid for hit in self.retriever.search(question, k=K)]

    def update(self, data: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from index.build import update_index

        live = self.retriever.live_index
        report = update_index(
            self.config, [data], [], progress=False, embedder=self.retriever.embedder, store=live.store
        )
        live.reload()
        return {"embedded": report.embedded, "updated": report.updated}


class LangChainSide:
    def __init__(self, workdir: Path, overrides: list[str]) -> None:
        self.store: Any = None

    def build(self, data: str) -> dict[str, Any]:
        from langchain_community.vectorstores import FAISS
        from langchain_huggingface import HuggingFaceEmbeddings

        from index.embedder import resolve_model_path

        titles, metadatas, ids = [], [], []
        with open(data, encoding="utf-8") as handle:  # the recipe: titles as they come, uid as metadata
            for line in handle:
                record = json.loads(line)
                titles.append(str(record.get("title") or ""))
                metadatas.append({"uid": str(record["uid"])})
                ids.append(str(record["uid"]))
        embeddings = HuggingFaceEmbeddings(
            model_name=resolve_model_path("bundled:all-MiniLM-L6-v2"), model_kwargs={"device": "cpu"}
        )
        self.store = FAISS.from_texts(titles, embeddings, metadatas=metadatas, ids=ids)
        return {"rows": len(titles)}

    def open(self) -> None:
        pass

    def search(self, question: str) -> list[str]:
        return [doc.metadata["uid"] for doc in self.store.similarity_search(question, k=K)]

    def update(self, data: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [str(r["uid"]) for r in rows]
        self.store.delete(ids)
        self.store.add_texts([str(r["title"]) for r in rows], metadatas=[{"uid": i} for i in ids], ids=ids)
        return {"embedded": len(rows)}


def child(side_name: str, workdir: str, overrides: list[str]) -> int:
    """Serve one side: JSON commands on stdin, one JSON answer per line on the saved stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    side = (ProjectSide if side_name == "project" else LangChainSide)(Path(workdir), overrides)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        if op == "build":
            answer = side.build(command["data"])
            answer["seconds"] = round(time.perf_counter() - started, 3)
            answer["peak_rss_mb"] = peak_rss_vmhwm_mb()
            answer["rss_mb"] = _rss_mb()
            side.open()
            side.search("warm-up question about a product")  # first-call costs stay out of the latencies
        elif op == "query":
            latencies, ranks = [], []
            for text, uid in command["questions"]:
                t = time.perf_counter()
                uids = side.search(text)
                latencies.append(time.perf_counter() - t)
                ranks.append(uids.index(uid) + 1 if uid in uids else None)
            answer = {"latencies": latencies, "ranks": ranks}
        elif op == "update":
            with open(command["rows"], encoding="utf-8") as handle:
                rows = [json.loads(x) for x in handle]
            answer = side.update(command["rows"], rows)
            answer["seconds"] = round(time.perf_counter() - started, 3)
        elif op == "exit":
            answer = {"peak_rss_mb": peak_rss_vmhwm_mb(), "rss_mb": _rss_mb()}
            out.write(json.dumps(answer) + "\n")
            return 0
        out.write(json.dumps(answer) + "\n")
    return 0


# --------------------------------------------------------------------------- the driver


class Child:
    def __init__(self, side: str, workdir: Path, overrides: list[str]) -> None:
        command = [sys.executable, __file__, "--child", side, "--workdir", str(workdir)]
        for item in overrides:
            command += ["--set", item]
        self.side = side
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the {self.side} side exited (status {self.proc.wait()}); see its stderr above"
            )
        return json.loads(line)

    def close(self) -> dict[str, Any]:
        answer = self.ask(op="exit")
        self.proc.wait(timeout=60)
        return answer


def _write_data(work: Path, rows: int, seed: int) -> tuple[Path, Path, list[dict[str, Any]]]:
    from rag.synthetic import write_synthetic_catalog

    data = write_synthetic_catalog(work / "catalog.jsonl", rows=rows, seed=seed)
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    # 1% of the rows get a new title: both sides must re-embed them
    changed = [dict(original, title=f"{original['title']} (Revised Edition)") for original in records[::100]]
    update = work / "update.jsonl"
    update.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in changed), encoding="utf-8")
    return data, update, changed


def _questions(data: Path, n: int) -> list[tuple[str, str, str]]:
    from rag.catalog import read_catalog
    from rag.config import load_config
    from rag.evaluation.questions import generate_questions

    rows, _ = read_catalog([data], load_config(None).catalog)
    return [(q.question, str(q.uid), q.kind) for q in generate_questions(rows, n=n, seed=0)]


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic catalog rows (default 20,000)")
    parser.add_argument("--questions", type=int, default=500, help="title-variant questions (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a project default (repeatable)",
    )
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    parser.add_argument("--child", choices=["project", "langchain"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        return child(args.child, args.workdir, args.set)

    from rag.config import load_config
    from rag.evaluation.runner import environment, environment_line

    defaults = load_config(None, args.set)
    result: dict[str, Any] = {
        "benchmark": "bench_vs_langchain",
        "command": "python benchmarks/bench_vs_langchain.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": args.rows,
        "project_defaults": {
            "embedding": {
                k: getattr(defaults.embedding, k) for k in ("model", "backend", "onnx_quantize", "device")
            },
            "index_type": defaults.index.type,
            "retrieval": dict(defaults.retrieval.__dict__),
            "overrides": args.set,
        },
        "environment": environment(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    print(environment_line(result["environment"]))
    print(
        f"project defaults: embedding.backend={defaults.embedding.backend}, index.type={defaults.index.type}, "
        f"retrieval.fusion={defaults.retrieval.fusion}; langchain: FAISS.from_texts + HuggingFaceEmbeddings"
    )
    with tempfile.TemporaryDirectory(prefix="bench-vs-langchain-") as tmp:
        work = Path(tmp)
        data, update, changed = _write_data(work, args.rows, args.seed)
        questions = _questions(data, args.questions)
        print(f"{args.rows:,} rows, {len(questions)} questions, update of {len(changed)} rows\n", flush=True)
        sides = {
            name: Child(name, work / name, args.set if name == "project" else [])
            for name in ("project", "langchain")
        }
        try:
            (work / "project").mkdir()
            (work / "langchain").mkdir()
            figures: dict[str, dict[str, Any]] = {name: {} for name in sides}
            for name, side in sides.items():
                figures[name]["build"] = side.ask(op="build", data=str(data))
                print(f"build   {name:9} {figures[name]['build']['seconds']:8.1f} s", flush=True)
            latencies: dict[str, list[float]] = {name: [] for name in sides}
            ranks: dict[str, list[Any]] = {name: [] for name in sides}
            for start in range(0, len(questions), BLOCK):
                block = [[text, uid] for text, uid, _kind in questions[start : start + BLOCK]]
                for name, side in sides.items():
                    answer = side.ask(op="query", questions=block)
                    latencies[name] += answer["latencies"]
                    ranks[name] += answer["ranks"]
            for name, side in sides.items():
                figures[name]["update"] = side.ask(op="update", rows=str(update))
                print(f"update  {name:9} {figures[name]['update']['seconds']:8.1f} s", flush=True)
            for name, side in sides.items():
                figures[name]["exit"] = side.close()
        finally:
            for side in sides.values():
                if side.proc.poll() is None:
                    side.proc.kill()
    for name in sides:
        f = figures[name]
        found = ranks[name]
        f["summary"] = {
            "build_s": f["build"]["seconds"],
            "query_p50_ms": _ms(latencies[name], 50),
            "query_p95_ms": _ms(latencies[name], 95),
            "update_s": f["update"]["seconds"],
            "build_peak_rss_mb": f["build"]["peak_rss_mb"],
            "peak_rss_mb": f["exit"]["peak_rss_mb"],
            "recall@1": round(sum(1 for r in found if r == 1) / len(found), 4),
            f"recall@{K}": round(sum(1 for r in found if r is not None) / len(found), 4),
        }
    result["sides"] = figures
    p, lc = figures["project"]["summary"], figures["langchain"]["summary"]
    result["ratios_project_over_langchain"] = ratios = {
        key: round(p[key] / lc[key], 3) if lc[key] else None
        for key in ("build_s", "query_p50_ms", "query_p95_ms", "update_s", "build_peak_rss_mb", "peak_rss_mb")
    }
    result["recall_difference_points"] = {
        key: round((p[key] - lc[key]) * 100, 1) for key in ("recall@1", f"recall@{K}")
    }
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print("| | project defaults | LangChain recipe | project / LangChain |")
    print("|---|---:|---:|---:|")
    for key, label in (
        ("build_s", f"build {args.rows:,} rows (s)"),
        ("query_p50_ms", "query p50 (ms)"),
        ("query_p95_ms", "query p95 (ms)"),
        ("update_s", f"update {len(changed):,} rows, 1% (s)"),
        ("build_peak_rss_mb", "peak RSS after build (MB)"),
        ("peak_rss_mb", "peak RSS, whole run (MB)"),
    ):
        print(f"| {label} | {p[key]:,.2f} | {lc[key]:,.2f} | {ratios[key]} |")
    for key in ("recall@1", f"recall@{K}"):
        print(
            f"| {key} | {p[key]:.3f} | {lc[key]:.3f} | {result['recall_difference_points'][key]:+.1f} points |"
        )
    print(f"\nload average start {result['load_average_start']} end {result['load_average_end']}")
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
