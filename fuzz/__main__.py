"""`python -m fuzz [NAME...]`: run each harness for a bounded time and print executions, coverage and findings.

    python -m fuzz                       # every harness, FUZZ_DURATION seconds (default 60) each
    python -m fuzz --duration 300 vring  # one harness, longer
    python -m fuzz --engine random      # the plain-Python mutator even where atheris is installed
    python -m fuzz --replay vring FILE  # run one input (a crash file) and show what it raises

The engine is atheris (libFuzzer) when it imports, else the plain-Python mutator (engine.py). Coverage is the
share of the executable lines of the harness' TARGETS that its final corpus runs (measured the same way for
both engines); with atheris, "edges" is libFuzzer's count of instrumented edges. Findings are written to
WORKDIR/NAME/ (crash-*); the exit status is 1 when there is one.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import HARNESSES, engine


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(name: str, seconds: int, work: Path) -> dict:
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "fuzz.atheris_main", name, "--", f"-max_total_time={seconds}", "-timeout=10",
            "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={work}/", str(corpus),
            str(engine.CORPUS / name)]
    p = subprocess.run(args, cwd=engine.ROOT.parent, capture_output=True, text=True)
    out = p.stderr + p.stdout
    (work / "libfuzzer.log").write_text(out)
    execs = re.findall(r"stat::number_of_executed_units: (\d+)", out)
    edges = re.findall(r"cov: (\d+)", out)
    crashes = sorted(str(f) for f in work.glob("crash-*")) + sorted(str(f) for f in work.glob("timeout-*"))
    if p.returncode and not crashes:
        crashes = [f"libFuzzer exited {p.returncode}: see {work / 'libfuzzer.log'}"]
    inputs = [f.read_bytes() for f in corpus.iterdir()] + engine.seeds(name)
    return {"executions": int(execs[-1]) if execs else 0, "edges": int(edges[-1]) if edges else None,
            "inputs": inputs, "findings": crashes}


def run_random(name: str, seconds: int, work: Path, seed: int) -> dict:
    result = engine.run_random(engine.load(name), seconds=seconds, seed=seed)
    found = []
    for f in result.findings:
        path = work / f.name
        path.write_bytes(f.input)
        (work / (f.name + ".txt")).write_text(f.error)
        found.append(str(path))
    return {"executions": result.executions, "edges": None, "inputs": result.corpus, "findings": found}


def _renamed(text: str):
    raise argparse.ArgumentTypeError("renamed: use --duration")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description="Run the fuzz harnesses for a bounded time.")
    p.add_argument("names", nargs="*", help=f"harnesses (default: all of {', '.join(HARNESSES)})")
    p.add_argument("--duration", type=int, default=int(os.environ.get("FUZZ_DURATION", "60")),
                   help="seconds per harness (default: $FUZZ_DURATION or 60)")
    p.add_argument("--seconds", type=_renamed, help=argparse.SUPPRESS)  # one word, one meaning: --duration
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto",
                   help="atheris (libFuzzer), the plain-Python mutator, or atheris when it imports (default)")
    p.add_argument("--workdir", help="where corpora and findings go (default: a new temporary folder, kept)")
    p.add_argument("--seed", type=int, default=0, help="the plain-Python mutator's random seed")
    p.add_argument("--replay", metavar="FILE", help="run the input FILE through the one harness named and exit")
    a = p.parse_args(argv)
    names = a.names or list(HARNESSES)
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        p.error(f"unknown harness(es) {', '.join(unknown)}; known: {', '.join(HARNESSES)}")
    if a.replay:
        finding = engine.run_input(engine.load(names[0]), Path(a.replay).read_bytes())
        print(finding.error if finding else "no error")
        return 1 if finding else 0
    logging.disable(logging.CRITICAL)  # the targets log every refused input
    kind = a.engine
    if kind == "auto":
        kind = "atheris" if have_atheris() else "random"
    elif kind == "atheris" and not have_atheris():
        p.error("atheris does not import here: pip install atheris (or the project's extra: '.[fuzz]')")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="isostack-fuzz-"))
    print(f"engine {kind}, {a.duration} s per harness, work in {workdir}", flush=True)
    rows = []
    for name in names:
        work = workdir / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        r = run_atheris(name, a.duration, work) if kind == "atheris" else run_random(name, a.duration, work, a.seed)
        run, total = engine.coverage(engine.load(name), r["inputs"])
        rows.append((name, r["executions"], r["edges"], run, total, len(r["inputs"]), r["findings"]))
        edges = f", {r['edges']} edges" if r["edges"] is not None else ""
        print(f"{name}: {r['executions']} executions, lines {run}/{total} ({100 * run / total:.0f}%){edges}, "
              f"corpus {len(r['inputs'])}, findings {len(r['findings'])}", flush=True)
        for f in r["findings"]:
            print(f"  finding: {f}", flush=True)
    print(f"\n| harness | executions | lines covered | edges ({kind}) | findings |\n|---|---|---|---|---|")
    for name, execs, edges, run, total, _n, found in rows:
        print(f"| {name} | {execs} | {run}/{total} ({100 * run / total:.0f}%) | {edges if edges else '-'} | "
              f"{len(found)} |")
    return 1 if any(row[-1] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
