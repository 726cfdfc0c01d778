"""Bounded load test of the HTTP API on loopback: N clients for a fixed number of seconds.

    .venv/bin/python benchmarks/load_api.py                      # starts `rag serve` on a free port, 8 clients x 20 s
    .venv/bin/python benchmarks/load_api.py --clients 16 --seconds 30 --mix answer,stream
    .venv/bin/python benchmarks/load_api.py --url http://127.0.0.1:8000   # a server you started yourself

Reports p50/p95/p99 latency (overall and per route), requests/s, errors and the server's resident
memory (RSS, sampled from /metrics every second). Errors must be 0; 429s (the designed answer to
more clients than api.max_concurrency) are counted separately, not as errors. Streamed requests are
timed to the last byte (`data: [DONE]`) and to the first content chunk (TTFT).

Only loopback servers are accepted (127.0.0.0/8, ::1, localhost): this is not a tool for load
testing other people's machines. Questions are made from titles of the catalog in `data` (the
bundled synthetic catalog written by `rag demo`), so most of them have an answer in the index.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

MAX_SECONDS = 600
MAX_CLIENTS = 256
TEMPLATES = ["What is {t} about?", "Who wrote {t}?", "Tell me about {t}", "{t}"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_questions(catalog: Path | None, n: int, seed: int) -> list[str]:
    """Questions from catalog titles (first `n * 5` lines, sampled), or the synthetic anchor questions."""
    titles: list[str] = []
    if catalog is not None and catalog.exists():
        with catalog.open(encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if i >= n * 5:
                    break
                try:
                    title = str(json.loads(line).get("title", "")).strip()
                except json.JSONDecodeError:
                    continue
                if title:
                    titles.append(title[:200])
    rng = random.Random(seed)
    if titles:
        rng.shuffle(titles)
        return [rng.choice(TEMPLATES).format(t=t) for t in titles[:n]]
    from rag.synthetic import ANCHOR_QUESTIONS

    return [q for q, _, _ in ANCHOR_QUESTIONS]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.ttft: list[float] = []
        self.ok = 0
        self.rejected_429 = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def one_request(client: httpx.AsyncClient, route: str, question: str, stats: Stats) -> None:
    started = time.perf_counter()
    try:
        if route == "answer":
            response = await client.post("/v1/answer", json={"question": question})
            status = response.status_code
            if status == 200 and not response.json().get("answer"):
                stats.error("empty answer")
                return
        else:
            body = {
                "model": "amazontitles-rag",
                "messages": [{"role": "user", "content": question}],
                "stream": route == "stream",
            }
            if route == "chat":
                response = await client.post("/v1/chat/completions", json=body)
                status = response.status_code
            else:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    status = response.status_code
                    done = False
                    first = None
                    async for line in response.aiter_lines():
                        if (
                            first is None
                            and line.startswith("data: {")
                            and '"content": "' in line
                            and '"content": ""' not in line
                        ):
                            first = time.perf_counter() - started
                        if line.startswith("data: {") and '"error"' in line[:20]:
                            stats.error("error event in stream")
                            return
                        done = done or line == "data: [DONE]"
                    if status == 200 and not done:
                        stats.error("stream without [DONE]")
                        return
                    if first is not None:
                        stats.ttft.append(first)
    except httpx.HTTPError as exc:
        stats.error(type(exc).__name__)
        return
    elapsed = time.perf_counter() - started
    if status == 200:
        stats.ok += 1
        stats.latency.setdefault(route, []).append(elapsed)
    elif status == 429:
        stats.rejected_429 += 1
        await asyncio.sleep(0.05)  # a polite client backs off instead of hammering
    else:
        stats.error(f"HTTP {status}")


async def read_rss(client: httpx.AsyncClient) -> int | None:
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return None
    match = re.search(r"^process_resident_memory_bytes (\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


async def run_load(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    routes: list[str],
    questions: list[str],
    seed: int,
) -> dict[str, Any]:
    stats = Stats()
    rss_samples: list[int] = []
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        for route in routes:  # warm-up, not counted
            await one_request(client, route, questions[0], Stats())
        rss_before = await read_rss(client)
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            rng = random.Random(seed + index)
            n = 0
            while time.monotonic() < deadline:
                await one_request(client, routes[(index + n) % len(routes)], rng.choice(questions), stats)
                n += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                rss = await read_rss(client)
                if rss:
                    rss_samples.append(rss)
                await asyncio.sleep(1.0)

        started = time.monotonic()
        await asyncio.gather(sampler(), *(worker(i) for i in range(clients)))
        wall = time.monotonic() - started
        rss_after = await read_rss(client)
    everything = [x for values in stats.latency.values() for x in values]

    def ms(v: float) -> float:
        return round(v * 1000, 1)

    return {
        "url": url,
        "clients": clients,
        "seconds": round(wall, 2),
        "routes": routes,
        "requests_ok": stats.ok,
        "requests_per_s": round(stats.ok / wall, 2) if wall else 0.0,
        "latency_ms": {
            "p50": ms(percentile(everything, 50)),
            "p95": ms(percentile(everything, 95)),
            "p99": ms(percentile(everything, 99)),
            "mean": ms(statistics.fmean(everything)) if everything else float("nan"),
        },
        "latency_ms_by_route": {
            r: {"n": len(v), "p50": ms(percentile(v, 50)), "p95": ms(percentile(v, 95))}
            for r, v in stats.latency.items()
        },
        "stream_ttft_ms": {"p50": ms(percentile(stats.ttft, 50)), "p95": ms(percentile(stats.ttft, 95))}
        if stats.ttft
        else None,
        "rejected_429": stats.rejected_429,
        "errors": sum(stats.errors.values()),
        "errors_by_kind": stats.errors,
        "server_rss_mb": {
            "before": round(rss_before / 2**20, 1) if rss_before else None,
            "peak": round(max(rss_samples) / 2**20, 1) if rss_samples else None,
            "after": round(rss_after / 2**20, 1) if rss_after else None,
        },
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "rag.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if args.config:
        command += ["--config", args.config]
    for override in args.overrides:
        command += ["--set", override]
    # the server writes to the log for its whole life: the handle stays open with it
    log = open(args.server_log, "wb") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(
    url: str, headers: dict[str, str], process: subprocess.Popen[bytes] | None, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(
                f"the server exited with status {process.returncode} before it was ready "
                "(use --server-log FILE to see why)"
            )
        try:
            response = httpx.get(url + "/readyz", headers=headers, timeout=5)
            if response.status_code == 200:
                return response.json()
            last = response.json().get("reason")
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise SystemExit(f"{url}/readyz not ready after {timeout:.0f} s: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running loopback server (default: start `rag serve` on a free port)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration (default 20)")
    parser.add_argument(
        "--mix",
        default="answer,chat,stream",
        help="routes the clients cycle through: answer (/v1/answer), chat (non-streamed), "
        "stream (SSE); default answer,chat,stream",
    )
    parser.add_argument("--questions", type=int, default=500, help="distinct questions (default 500)")
    parser.add_argument(
        "--catalog", default=None, help="catalog for questions (default: the config's `data`)"
    )
    parser.add_argument("--config", "-c", help="config for the server this script starts")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the server this script starts (repeatable)",
    )
    parser.add_argument("--server-log", help="write the started server's output here")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)

    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be between 1 and {MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    routes = [r.strip() for r in args.mix.split(",") if r.strip()]
    if not routes or any(r not in ("answer", "chat", "stream") for r in routes):
        parser.error("--mix takes answer, chat and/or stream, comma-separated")
    if args.url:
        host = urlparse(args.url).hostname or ""
        if not is_loopback(host):
            parser.error(
                f"--url {args.url}: only loopback servers (127.0.0.1, ::1, localhost) may be load tested"
            )

    from rag.config import load_config

    config = load_config(args.config, args.overrides)
    key = os.environ.get(config.api.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    questions = load_questions(Path(args.catalog or config.data), args.questions, args.seed)

    process = None
    url = args.url.rstrip("/") if args.url else ""
    try:
        if not url:
            process, url = start_server(args)
        t0 = time.monotonic()
        ready = wait_ready(url, headers, process, args.ready_timeout)
        print(
            f"server {url} ready in {time.monotonic() - t0:.1f}s: index {ready.get('index_version')} "
            f"({ready.get('rows')} rows), generator {ready.get('generator')}",
            file=sys.stderr,
        )
        report = asyncio.run(run_load(url, headers, args.clients, args.seconds, routes, questions, args.seed))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    report["index_version"], report["index_rows"] = ready.get("index_version"), ready.get("rows")
    report["generator"] = ready.get("generator")
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
