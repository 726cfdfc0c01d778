"""`rag index ...`: build, inspect, update and maintain the versioned index.

    rag index build --data ../shared/data/amazontitles/trn_sample.jsonl
    rag index info
    rag index update --data new.jsonl --delete gone_uids.txt
    rag index compact                       # fold the update delta into a fresh base segment
    rag index versions
    rag index rollback [VERSION]
    rag index gc --keep 3
    rag index verify [--version VERSION]
    rag index distill-static                # once, for --set embedding.backend=static

All take `--config FILE` and `--set key=value` (e.g. `--set index.path=data/other_index`).
Exit status: 0 on success, 1 when verification fails, 2 on errors the user can fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rag.cli_common import config_from_args, describe_os_error


def _store(config: Any) -> Any:
    from .store import IndexStore

    return IndexStore.from_config(config)


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import build_index

    config = config_from_args(args)
    paths = args.data or [config.data]
    report = build_index(config, paths, progress=not args.quiet)
    print(report.summary())
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from .build import read_uid_list, update_index

    config = config_from_args(args)
    deletes = read_uid_list(args.delete) if args.delete else []
    if not args.data and not deletes:
        print(
            "error: nothing to do: pass --data FILE (rows to upsert) and/or --delete FILE (uids to remove)",
            file=sys.stderr,
        )
        return 2
    report = update_index(config, args.data or [], deletes, progress=not args.quiet)
    print(report.summary())
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from .build import compact_index

    report = compact_index(config_from_args(args), force=args.force)
    print(report.summary())
    return 0


def _format_info(manifest: dict[str, Any], path: Any) -> str:
    emb, idx = manifest["embedding"], manifest["index"]
    total = sum(f["size"] for f in manifest["files"].values())
    lines = [
        f"version:    {manifest['version']} ({manifest.get('operation', '?')}, parent {manifest.get('parent') or '-'})",
        f"created:    {manifest.get('created')}",
        f"rows:       {manifest['rows']:,}",
        _format_segments(manifest),
        f"embedding:  {emb['model']} (dimension {emb['dimension']})",
        f"index:      {idx['type']} {json.dumps(idx.get('params', {}))} (faiss {idx.get('faiss_version', '?')})",
        f"files:      {len(manifest['files'])} files, {total / 1e6:.1f} MB in {path}",
    ]
    auto = idx.get("auto")
    if auto:
        lines.insert(-1, "auto:       " + _format_auto(auto))
    for name, entry in sorted(manifest["files"].items()):
        lines.append(f"  {name:<22} {entry['size']:>14,} B  sha256 {entry['sha256'][:16]}…")
    if manifest.get("artifacts"):
        lines.append(f"artifacts:  {', '.join(manifest['artifacts'])}")
    lines.extend(
        f"source:     {source.get('path')} ({source.get('size', '?'):,} B)"
        if isinstance(source.get("size"), int)
        else f"source:     {source.get('path')}"
        for source in manifest.get("sources", [])
    )
    summary = manifest.get("read_summary")
    if summary:
        lines.append(
            f"catalog:    read {summary.get('read', 0):,} = accepted {summary.get('accepted', 0):,} + rejected "
            f"{summary.get('rejected', 0):,} + duplicates {summary.get('duplicates', 0):,}"
        )
    if manifest.get("update"):
        lines.append("update:     " + ", ".join(f"{k} {v:,}" for k, v in manifest["update"].items()))
    return "\n".join(lines)


def _format_auto(auto: dict[str, Any]) -> str:
    """How `index.type: auto` chose, one line."""
    if auto.get("chosen") != "ivf":
        return f"chose exact search (flat) for {auto['rows']:,} rows (ivf from {auto['ivf_min_rows']:,})"
    return (
        f"chose ivf for {auto['rows']:,} rows: nlist {auto['nlist']:,}, nprobe {auto['nprobe']} "
        f"(recall@10 {auto['recall_at_10']:.3f}, 95% lower bound {auto.get('recall_at_10_lower', 0):.3f}, "
        f"vs exact on {auto['queries']} held-back titles; target {auto['recall_target']})"
    )


def _format_segments(manifest: dict[str, Any]) -> str:
    from .store import segment_counts

    base_rows, delta = segment_counts(manifest)
    if delta is None:
        return f"segments:   base {base_rows:,} rows (no delta)"
    return (
        f"segments:   base {base_rows:,} rows - {delta['tombstones']:,} tombstones + delta {delta['vectors']:,} "
        f"vectors ({delta['rows']:,} delta rows); `rag index compact` folds the delta into a new base"
    )


def _cmd_info(args: argparse.Namespace) -> int:
    store = _store(config_from_args(args))
    manifest = store.manifest(args.version)
    if args.json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        print(f"index:      {store.root}")
        print(_format_info(manifest, store.version_dir(manifest["version"])))
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    store = _store(config_from_args(args))
    versions = store.versions()
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    if not versions:
        print(f"no versions under {store.versions_dir}; build one with `rag index build --data PATH`")
        return 0
    for v in versions:
        mark = "*" if v["is_current"] else " "
        rows = f"{v['rows']:,}" if isinstance(v.get("rows"), int) else "?"
        print(
            f"{mark} {v['version']}  {v.get('created') or '?':<25} {rows:>12} rows  "
            f"{v.get('operation') or '?':<8} {v.get('type') or '?':<5} parent {v.get('parent') or '-'}"
        )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    store = _store(config_from_args(args))
    before = store.current_version()
    version = store.rollback(args.version)
    print(f"current version: {before} -> {version}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    keep = args.keep if args.keep is not None else config.index.keep_versions
    removed = _store(config).gc(keep)
    print(f"removed {len(removed)} version(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    store = _store(config_from_args(args))
    versions = store.complete_versions() if args.all else [args.version]
    failed = 0
    for version in versions:
        report = store.verify(version)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0


def _cmd_distill_static(args: argparse.Namespace) -> int:
    import time

    from .static_embedder import distill_static, static_model_dir

    config = config_from_args(args)
    target = static_model_dir(config.embedding)
    if target.is_dir() and not args.force:
        print(f"static model already distilled: {target} (--force distils it again)")
        return 0
    print(
        f"distilling {config.embedding.model} into {target} (once; a few minutes on 2 cores)", file=sys.stderr
    )
    started = time.perf_counter()
    path = distill_static(config.embedding, force=args.force)
    print(f"{path} ({time.perf_counter() - started:.0f} s); use it with --set embedding.backend=static")
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print index errors (which name the file and the fix) without a traceback."""

    def run(args: argparse.Namespace) -> int:
        from .embedder import EmbedderError
        from .store import IndexStoreError

        try:
            return func(args)
        except (IndexStoreError, EmbedderError, ValueError) as exc:
            from rag.config import ConfigError

            if isinstance(exc, ConfigError):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permissions, a read-only file system: the environment, not a bug
            if isinstance(exc, (FileNotFoundError, BrokenPipeError)):
                raise
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 2

    run.__name__ = func.__name__
    return run


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    index = subparsers.add_parser("index", help="build, update, inspect and maintain the index")
    sub = index.add_subparsers(dest="index_command", metavar="ACTION")
    index.set_defaults(func=lambda args: (index.print_help(), 2)[1])

    p = sub.add_parser("build", parents=[common], help="build a new index version from catalog files")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="catalog files (JSON lines, .json, .gz); default: `data` of the config",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_guarded(_cmd_build))

    p = sub.add_parser(
        "update",
        parents=[common],
        help="upsert rows and delete uids as a new version (only changed titles are embedded)",
    )
    p.add_argument("--data", nargs="+", metavar="PATH", help="catalog files with new or changed rows")
    p.add_argument("--delete", metavar="FILE", help="file of uids to delete, one per line")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_guarded(_cmd_update))

    p = sub.add_parser(
        "compact",
        parents=[common],
        help="write base - tombstones + delta as a fresh base segment (no embedding)",
    )
    p.add_argument("--force", action="store_true", help="rewrite the base even when there is no delta")
    p.set_defaults(func=_guarded(_cmd_compact))

    p = sub.add_parser("info", parents=[common], help="show the manifest of the current (or given) version")
    p.add_argument("--version", default=None)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_guarded(_cmd_info))

    p = sub.add_parser("versions", parents=[common], help="list versions (* = current)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(_cmd_versions))

    p = sub.add_parser(
        "rollback", parents=[common], help="serve an older version (default: the one before current)"
    )
    p.add_argument("version", nargs="?", default=None)
    p.set_defaults(func=_guarded(_cmd_rollback))

    p = sub.add_parser(
        "gc", parents=[common], help="delete old versions, keeping the newest N and the current one"
    )
    p.add_argument("--keep", type=int, default=None, help="versions to keep (default: index.keep_versions)")
    p.set_defaults(func=_guarded(_cmd_gc))

    p = sub.add_parser(
        "distill-static",
        parents=[common],
        help="distil embedding.model into static word-piece vectors for embedding.backend=static (once, offline)",
    )
    p.add_argument("--force", action="store_true", help="distil again even when the model is already there")
    p.set_defaults(func=_guarded(_cmd_distill_static))

    p = sub.add_parser("verify", parents=[common], help="check sizes, sha256 and row counts of a version")
    p.add_argument("--version", default=None, help="default: the current version")
    p.add_argument("--all", action="store_true", help="verify every complete version")
    p.set_defaults(func=_guarded(_cmd_verify))
