"""The engines: a plain-Python mutator of the seed corpus (coverage-guided by line coverage) and the line
coverage measure that reports both it and atheris' runs.

The mutator is the fallback where atheris does not install, and the bounded slice of the unit suite
(tests/test_fuzz_harnesses.py): seeded, so a run is repeatable. It keeps an input that reached new lines of
the harness' TARGETS, as libFuzzer keeps one that reached new edges.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
MAX_LEN = 4096  # the mutator's largest input (libFuzzer's -max_len default is this too, for a small corpus)
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1]


def load(name: str):
    """The harness module fuzz.<name>."""
    return importlib.import_module(f"fuzz.{name}")


def seeds(name: str) -> list[bytes]:
    folder = CORPUS / name
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


# ---- line coverage of the targets ------------------------------------------------------------------------------

def _code_lines(code) -> set[int]:
    lines = {line for _s, _e, line in code.co_lines() if line is not None}
    for const in code.co_consts:
        if hasattr(const, "co_lines"):
            lines |= _code_lines(const)
    return lines


def target_files(harness) -> dict[str, set[int]]:
    """{source file: its executable lines} of the harness' TARGETS (docstring-only lines included by Python)."""
    out = {}
    for modname in harness.TARGETS:
        mod = importlib.import_module(modname)
        path = os.path.realpath(mod.__file__)
        if not path.endswith(".py"):
            continue
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        out[path] = _code_lines(code) - {code.co_firstlineno}
    return out


class LineTracer:
    """Records the (file, line) pairs run in `files` while active (sys.settrace: slow, but stdlib)."""

    def __init__(self, files) -> None:
        self.files = set(files)
        self.seen: set[tuple[str, int]] = set()
        self._real: dict[str, str] = {}

    def _local(self, frame, event, arg):
        if event == "line":
            self.seen.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def _global(self, frame, event, arg):
        name = frame.f_code.co_filename
        real = self._real.get(name)
        if real is None:
            real = self._real[name] = os.path.realpath(name) if name[:1] != "<" else name
        if real in self.files:
            return self._local
        return None

    def __enter__(self):
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)


def coverage(harness, inputs) -> tuple[int, int]:
    """(lines run, executable lines) of the harness' TARGETS over `inputs`."""
    files = target_files(harness)
    tracer = LineTracer(files)
    for data in inputs:
        with tracer:
            try:
                harness.one_input(data)
            except Exception:  # noqa: BLE001 - a crashing input still covers lines; crashes are reported elsewhere
                pass
    total = sum(len(lines) for lines in files.values())
    run = sum(1 for f, line in tracer.seen if line in files.get(os.path.realpath(f), ()))
    return run, total


# ---- the mutator -----------------------------------------------------------------------------------------------

def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to four random edits of `data` (libFuzzer's kinds: bits, bytes, interesting values, insert, erase,
    copy within, splice with another input)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        n = len(buf)
        if kind == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif kind == 2 and n:
            size = rng.choice((1, 2, 4, 8))
            at = rng.randrange(n)
            value = rng.choice(INTERESTING) + rng.choice((0, 0, -1, 1))
            buf[at:at + size] = (value % (1 << 8 * size)).to_bytes(size, rng.choice(("little", "big")))
        elif kind == 3:
            at = rng.randint(0, n)
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 4 and n:
            at = rng.randrange(n)
            del buf[at:at + rng.randint(1, 16)]
        elif kind == 5 and n:
            a, b = rng.randrange(n), rng.randrange(n)
            size = rng.randint(1, 32)
            buf[b:b] = buf[a:a + size]
        elif kind == 6 and corpus:
            other = rng.choice(corpus)
            at = rng.randint(0, n)
            o = rng.randint(0, len(other))
            buf = buf[:at] + other[o:o + rng.randint(1, 64)] + buf[at:]
        elif kind == 7 and n:
            at = rng.randrange(n)
            buf[at] = rng.choice(b"0123456789-.:{}[]\",eE \n\x00\xff")
        elif kind == 8 and n:
            del buf[rng.randrange(n):]
    return bytes(buf[:MAX_LEN])


@dataclass
class Finding:
    input: bytes
    error: str

    @property
    def name(self) -> str:
        return "crash-" + hashlib.sha1(self.input).hexdigest()[:16]


@dataclass
class RunResult:
    executions: int = 0
    seconds: float = 0.0
    corpus: list[bytes] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def run_input(harness, data: bytes) -> Finding | None:
    """One input; a Finding with the traceback when the harness raised (the target broke its contract)."""
    try:
        harness.one_input(data)
    except Exception:  # noqa: BLE001 - whatever escapes is the finding
        return Finding(data, traceback.format_exc(limit=-8))
    return None


def run_random(harness, seconds: float | None = None, executions: int | None = None, seed: int = 0,
               guided: bool = True, corpus: list[bytes] | None = None) -> RunResult:
    """Mutate the corpus (default: the harness' seeds) for `seconds` or `executions` inputs, whichever ends
    first; with `guided`, inputs that run new lines of the targets join the corpus. Findings are
    deduplicated by the last line of their traceback."""
    rng = random.Random(seed)
    corpus = list(corpus if corpus is not None else seeds(harness.__name__.rsplit(".", 1)[1])) or [b""]
    result = RunResult(corpus=corpus)
    files = target_files(harness) if guided else {}
    tracer = LineTracer(files)
    seen_errors: set[str] = set()
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else None
    queue = list(corpus)  # the seeds themselves first
    while True:
        if executions is not None and result.executions >= executions:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        data = queue.pop() if queue else mutate(rng, rng.choice(corpus), corpus)
        before = len(tracer.seen)
        if guided:
            with tracer:
                finding = run_input(harness, data)
        else:
            finding = run_input(harness, data)
        result.executions += 1
        if finding is not None:
            key = finding.error.strip().splitlines()[-1]
            if key not in seen_errors:
                seen_errors.add(key)
                result.findings.append(finding)
        elif guided and len(tracer.seen) > before and data not in corpus:
            corpus.append(data)
    result.seconds = time.monotonic() - start
    return result
