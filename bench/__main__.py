"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME ...] [--compare FILE]``.

Every scenario runs in a fresh Python process (so each peak RSS belongs to its
run alone) against the mock chat-completions server on 127.0.0.1, which runs in
a process of its own (``--mock thread``: in a thread of the scenario's process,
as before December 2026); nothing leaves the machine. The table goes to stdout, the figures to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.scenarios import FULL, QUICK, SCENARIOS

MARK = "BENCH-JSON:"
ORDER = ["critical_path", "overhead", "tokens", "scale", "memory_recall"]


def _jobs(sizes: dict[str, dict[str, Any]], only: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(scenario, params) per child process; scale runs one process per project count."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    for name in ORDER:
        if only and name not in only:
            continue
        params = dict(sizes[name])
        if name == "scale":
            for n in params.pop("projects"):
                jobs.append((name, {**params, "projects": [n]}))
        else:
            jobs.append((name, params))
    return jobs


def _merge(results: dict[str, Any], name: str, r: dict[str, Any]) -> None:
    """Add one process's result to its scenario's; a failed process (scale runs one per size) keeps the
    cases the others measured and adds its error."""
    had = results.get(name)
    if had is None:
        results[name] = r
    elif "cases" in r and "cases" in had:
        had["cases"].update(r["cases"])
        had["ok"] = had.get("ok", True) and r.get("ok", True)
    elif r.get("error"):
        had["error"] = "; ".join(e for e in (had.get("error"), r["error"]) if e)
        had["ok"] = False
    else:  # an error first, then cases
        results[name] = {**r, "error": had.get("error"), "ok": False}


def _ok(r: dict[str, Any]) -> bool:
    if r.get("error"):
        return False
    if "cases" in r:
        return all(c.get("ok", False) for c in r["cases"].values())
    return bool(r.get("ok", False))


def _run_child(name: str, params: dict[str, Any], timeout: float, mock: str = "process") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", "--child", name, "--params", json.dumps(params), "--mock", mock]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "ok": False}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' / '.join(tail)[:400]}", "ok": False}


def _child(name: str, params: dict[str, Any], mock: str) -> None:
    logging.basicConfig(level=logging.ERROR)
    scenarios.TUNE_GC = True
    scenarios.MOCK = mock
    with tempfile.TemporaryDirectory(prefix="ateams-bench-") as tmp:
        result = asyncio.run(SCENARIOS[name](**params, tmp_dir=tmp))
    print(MARK + json.dumps(result, default=str), flush=True)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest sizes (seconds, not minutes)")
    parser.add_argument("--only", nargs="+", choices=ORDER, default=[], help="run only these scenarios")
    parser.add_argument("--compare", type=Path, help="a previous results JSON to compare with (e.g. bench/results/latest.json)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {report.RESULTS_DIR})")
    parser.add_argument("--no-save", action="store_true", help="print only; write no JSON")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per scenario process")
    parser.add_argument("--mock", choices=scenarios.MOCK_MODES, default="process",
                        help="where the mock model server runs: its own process (default: a fair comparison) or "
                             "a thread of the engine's process (as before December 2026, sharing its interpreter lock)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        _child(args.child, json.loads(args.params or "{}"), args.mock)
        return 0

    previous = None
    if args.compare:
        previous = json.loads(args.compare.read_text(encoding="utf-8"))  # read first: latest.json gets overwritten
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {}
    load_before = _loadavg()
    started = time.perf_counter()
    try:
        for name, params in _jobs(sizes, args.only):
            t = time.perf_counter()
            print(f"running {name} {json.dumps(params)} ...", file=sys.stderr, flush=True)
            r = _run_child(name, params, args.timeout, args.mock)
            print(f"  {'ok' if _ok(r) else 'FAILED'} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
            _merge(results, name, r)
    except KeyboardInterrupt:  # subprocess.run killed the scenario's process; its mock server exits with it
        print("interrupted: nothing saved", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - started

    table = report.rows(results)
    document: dict[str, Any] = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "mock": args.mock,  # where the mock model server ran
            "seconds": round(elapsed, 1),
            "machine": report.machine(),
            # other work on the machine inflates every figure: compare runs made at a low load
            "load_avg_1min": {"before": load_before, "after": _loadavg()},
            "sizes": {k: v for k, v in sizes.items() if not args.only or k in args.only},
            "targets": report.TARGETS,
        },
        "headline": report.headline(results),
        "table": [list(r) for r in table],
        "scenarios": results,
    }
    if args.json:
        print(json.dumps(document, indent=1, default=str))
    else:
        m = document["meta"]["machine"]
        print(f"A-TEAMs benchmarks{' (quick)' if args.quick else ''}: {m['cpu']}, {m['cores']} cores, "
              f"{m['memory_gb']} GB, Python {m['python']}, commit {m['commit']}{' (dirty)' if m['dirty'] else ''}; "
              f"mock server in its own {args.mock}; {elapsed:.0f} s; load average {load_before} before, {_loadavg()} after\n")
        print(report.render(table))
        if previous is not None:
            print(f"\nCompared with {args.compare} ({previous.get('meta', {}).get('when', '?')}, "
                  f"commit {previous.get('meta', {}).get('machine', {}).get('commit', '?')}):\n")
            print(report.compare(document["headline"], previous.get("headline", {})))
    if not args.no_save:
        path = report.save(document, args.out)
        print(f"\nJSON: {path} (and {path.parent / 'latest.json'})", file=sys.stderr)
    return 0 if all(_ok(r) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
