"""The fuzz harnesses (fuzz/, docs/reliability.md#fuzzing), a bounded slice: each runs its seed corpus (real
messages, frames, rings and playbooks, and the inputs of past findings) and a few thousand mutations of it
with the plain-Python engine, seeded so that a failure repeats. Any exception is a target breaking its
contract; the long runs are `tox -e fuzz` / `python -m fuzz`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from isostack import layout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the folder fuzz/ (it takes the root off again)
from fuzz import HARNESSES, engine  # noqa: E402

#: mutated inputs per harness (default 3000): fewer for vring (two datapaths, four ring walks per input)
EXECUTIONS = {"vring": 1500}


@pytest.mark.parametrize("name", HARNESSES)
def test_seed_corpus_passes(name):
    harness = engine.load(name)
    seeds = engine.seeds(name)
    assert len(seeds) >= 2
    for data in seeds:
        finding = engine.run_input(harness, data)
        assert finding is None, finding.error


@pytest.mark.parametrize("name", HARNESSES)
def test_mutated_inputs_pass(name):
    result = engine.run_random(engine.load(name), executions=EXECUTIONS.get(name, 3000), seconds=20, seed=12,
                               guided=False)
    assert result.executions >= 200
    assert not result.findings, result.findings[0].error


def test_seeds_reach_the_targets():
    """The seeds are real inputs: each harness' corpus runs a good share of its targets' lines."""
    for name in HARNESSES:
        run, total = engine.coverage(engine.load(name), engine.seeds(name))
        assert run / total > 0.1, (name, run, total)


def test_mutator_edits_and_stays_bounded():
    import random

    rng = random.Random(1)
    seed = bytes(range(200))
    outs = [engine.mutate(rng, seed, [seed]) for _ in range(200)]
    assert sum(o != seed for o in outs) > 150
    assert all(len(o) <= engine.MAX_LEN for o in outs)


def test_a_finding_is_reported_with_its_traceback(monkeypatch):
    """The harness fails on the code before a fix: the regress input of the geometry finding, with the fix
    taken out of Geometry.from_dict, raises OverflowError out of parse_hello."""
    def unfixed(cls, d):
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__}).check()

    monkeypatch.setattr(layout.Geometry, "from_dict", classmethod(unfixed))
    harness = engine.load("attach")
    data = (engine.CORPUS / "attach" / "regress-geometry-infinity").read_bytes()
    finding = engine.run_input(harness, data)
    assert finding is not None and "OverflowError" in finding.error
    result = engine.run_random(harness, executions=50, seed=0, guided=False,
                               corpus=[data])
    assert result.findings
