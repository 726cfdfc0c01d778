"""`rag bench ...`: run the benchmark scripts of benchmarks/ by name (registered by rag/cli.py).

    rag bench                         # list the benchmarks
    rag bench query                   # benchmarks/bench_query.py with its defaults (10k, 100k, 1.3M rows)
    rag bench query -- --scales 10000 --queries 50
    rag bench index_update -- --rows 100000     # benchmarks/bench_index_update.py (index package)
    rag bench all                     # every benchmarks/bench_*.py with its defaults, JSON into results/
    rag bench report                  # benchmarks/report.py: results/*.json -> results/REPORT.md + PNG plots

Each script runs in its own Python process (the same interpreter), so a benchmark's memory
figures are its own. Arguments after `--` go to the script unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def available(bench_dir: Path = BENCH_DIR) -> dict[str, Path]:
    """name -> script: benchmarks/bench_<name>.py, plus "report" for benchmarks/report.py."""
    scripts = {p.stem[len("bench_") :]: p for p in sorted(bench_dir.glob("bench_*.py"))}
    if (bench_dir / "report.py").exists():
        scripts["report"] = bench_dir / "report.py"
    return scripts


def _docline(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip().strip('"').strip()
        if text:
            return text
    return ""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "bench", help="run the benchmarks in benchmarks/ by name (rag bench to list them)"
    )
    p.add_argument(
        "name", nargs="?", default=None, help="benchmark name (bench_<name>.py), 'all' or 'report'"
    )
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script, after --")
    p.add_argument(
        "--results", default="results", help="folder for JSON outputs of `rag bench all` (default results/)"
    )
    p.set_defaults(func=_cmd_bench)


def run_script(path: Path, args: list[str]) -> int:
    command = [sys.executable, str(path), *args]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command)


def _cmd_bench(args: argparse.Namespace) -> int:
    from rag.cli_common import UsageError

    scripts = available()
    extra = list(args.script_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.name is None:
        if not scripts:
            print(f"no benchmarks found in {BENCH_DIR}")
            return 0
        width = max(len(n) for n in scripts)
        for name, path in scripts.items():
            print(f"{name:<{width}}  {path.relative_to(BENCH_DIR.parent)}  {_docline(path)}")
        return 0
    if args.name == "all":
        status = 0
        Path(args.results).mkdir(parents=True, exist_ok=True)
        for name, path in scripts.items():
            if name == "report":
                continue
            # scripts that take --out write JSON for the report; the others print their figures only
            takes_out = '"--out"' in path.read_text(encoding="utf-8")
            out = ["--out", str(Path(args.results) / f"bench_{name}.json")] if takes_out else []
            code = run_script(path, [*out, *extra])
            if code:
                print(f"benchmark {name} failed with exit status {code}", file=sys.stderr)
                status = status or code
        if "report" in scripts:
            status = run_script(scripts["report"], ["--results", args.results]) or status
        return status
    if args.name not in scripts:
        known = ", ".join(sorted(scripts)) or "none"
        raise UsageError(
            f"rag bench {args.name}: no benchmarks/bench_{args.name}.py; known benchmarks: {known}, all"
        )
    return run_script(scripts[args.name], extra)
