"""How often the distributed tests abort: tests/test_distributed.py run N times in a row (default 20).

    python benchmarks/distributed_aborts.py [--runs 20] [-k EXPR] [--json]

An abort is a run whose pytest process ends by SIGABRT (return code -6 or 134) or whose output
shows one: "terminate called" (C++ std::terminate, the message of a gloo thread still running at
interpreter exit), "(SIGABRT)" as torchrun names the signal, "Fatal Python error: Aborted", or a
worker that "exited with code -6" / "exitcode: -6" (what ``pocketcnn train --nproc`` and torchrun
report for an aborted rank). ``--log-dir`` keeps each failed run's output. Each run's line says how
long it took, pytest's summary and whether it aborted; the last line counts the aborts. A run
that fails without an abort is counted apart (a failure is not an abort, and neither is hidden).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/test_distributed.py"
# what an abort prints (never the word alone: a failing test's source, printed by pytest, may name it)
ABORT = re.compile(r"terminate called|\(SIGABRT\)|Signals\.SIGABRT|exited with code -6|exitcode\s*:\s*-6|"
                   r"Aborted \(core dumped\)|Fatal Python error: Aborted")
ABORT_CODES = (-6, 134)


def run_once(k: str | None, timeout_s: float) -> tuple[dict, str]:
    """One pytest run of the distributed tests: (seconds, return code, summary line, abort or not; its output)."""
    cmd = [sys.executable, "-m", "pytest", TESTS, "-q", "-p", "no:cacheprovider", "-rf"] + (["-k", k] if k else [])
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                           env=dict(os.environ, PYTHONFAULTHANDLER="1"))
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        out = "".join(b.decode(errors="replace") if isinstance(b, bytes) else (b or "") for b in (exc.stdout, exc.stderr))
    lines = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    hits = sorted(set(ABORT.findall(out)))
    return {"seconds": round(time.perf_counter() - t0, 1), "returncode": code, "summary": lines[-1] if lines else "",
            "abort": code in ABORT_CODES or bool(hits), "signs": hits, "failed": code != 0}, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="how many runs in a row (default 20)")
    ap.add_argument("-k", help="pytest -k expression (default: every test of the file)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take (default 1800)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    ap.add_argument("--log-dir", type=Path, help="write each failed run's whole output there (run-N.log)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, received {args.runs}")
    runs = []
    for i in range(args.runs):
        res, out = run_once(args.k, args.timeout)
        runs.append(res)
        if args.log_dir and res["failed"]:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"run-{i + 1}.log").write_text(out)
        verdict = "ABORT " + ", ".join(res["signs"]) if res["abort"] else ("failed" if res["failed"] else "ok")
        print(f"run {i + 1}/{args.runs}: {res['seconds']:.0f} s, {res['summary'] or 'no summary'}: {verdict}",
              file=sys.stderr, flush=True)
    aborts = sum(r["abort"] for r in runs)
    other = sum(r["failed"] and not r["abort"] for r in runs)
    summary = {"runs": len(runs), "aborts": aborts, "other_failures": other,
               "seconds": round(sum(r["seconds"] for r in runs), 1), "load": os.getloadavg(), "details": runs}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{aborts} aborts in {len(runs)} runs of {TESTS} ({other} other failures, "
              f"{summary['seconds']:.0f} s in all)")
    return 1 if aborts or other else 0


if __name__ == "__main__":
    sys.exit(main())
