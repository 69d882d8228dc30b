"""`fab run-benchmark --set KEY=VALUE`: overrides checked by the playbook's own strict validation, errors
naming the --set, and the resolved playbook recorded in run.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from harness_helpers import ISO_PB, iso_runner

from testbed.harness import overrides, results
from testbed.harness.benchmark import execute
from testbed.harness.playbook import PlaybookError, load_playbook, parse_playbook

REPO = Path(__file__).resolve().parents[1]

PB = """\
version: 1
name: two
defaults:
  duration: 3
  client: iso-a
tests:
  - name: stream-64
    test: stream
    size: 64
    duration: 10       # the entry's own value: a bare --set duration overrides it too
  - name: rr-64
    test: rr
    size: 64
"""


def _no_lines(specs):
    """The specs without the lines their keys came from (the resolved text has its own lines)."""
    return [{k: v for k, v in vars(s).items() if not k.endswith("_line")} for s in specs]


@pytest.fixture
def pb(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(PB)
    return path


def test_a_test_key_applies_to_every_test_and_the_other_forms_to_their_place(pb):
    p = overrides.load(pb, ["duration=5", "tests.0.connections=[1, 4]", "tests.rr-64.size=128", "seed=7",
                            "defaults.warmup=0.5", "stack=[legacy, iso]", "order=sequential"])
    (stream, rr) = p.tests
    assert (stream.duration, rr.duration) == (5.0, 5.0)
    assert (stream.connections, rr.connections) == ((1, 4), (1,))
    assert (stream.sizes, rr.sizes) == ((64,), (128,))
    assert (stream.warmup, rr.warmup, stream.stacks) == (0.5, 0.5, ("legacy", "iso"))
    assert (p.seed, p.order) == (7, "sequential")
    assert p.overrides[0] == "duration=5" and p.source_sha256 == hashlib.sha256(PB.encode()).hexdigest()
    assert p.text.startswith(f"# {pb} resolved with --set duration=5 --set tests.0.connections=[1, 4]")
    # the resolved text is a playbook of its own that gives the same tests (what --resume runs again)
    again = parse_playbook(p.text, pb)
    assert _no_lines(again.tests) == _no_lines(p.tests) and (again.seed, again.order) == (7, "sequential")
    assert p.sha256 == hashlib.sha256(p.text.encode()).hexdigest() != p.source_sha256


def test_without_overrides_the_file_is_the_playbook(pb):
    p = overrides.load(pb, [])
    assert p.text == PB and p.overrides == () and p.source_sha256 is None


@pytest.mark.parametrize("given, message", [
    ("duraton=5", "--set duraton=5: unknown key 'duraton' (allowed: name, "),
    ("duraton=5", "; did you mean 'duration'?"),
    ("defaults.sise=64", "--set defaults.sise=64: unknown key 'sise'"),
    ("tests.0.sise=64", "did you mean 'size'?"),
    ("tests.2.size=64", "--set tests.2.size=64: tests has 2 entries (0..1), not 2"),
    ("tests.rr.size=64", "no test named 'rr' (tests: stream-64, rr-64)"),
    ("duration", "--set duration: expected KEY=VALUE"),
    ("size=[1,", "the value is not valid YAML"),
    ("tests.0=1", "cannot set 'tests.0' this way"),
    # values: the playbook's validation, located at the --set
    ("duration=-1", "two.yaml (--set duration=-1): tests[0]: duration must be > 0 seconds, got -1.0"),
    ("connections=[1, 1]", "(--set connections=[1, 1]): tests[0]: 'connections' lists a value twice"),
    ("stack=isostack", "(--set stack=isostack): tests[0]: unknown stack 'isostack'"),
    ("tests.0.response_size=13", "(--set tests.0.response_size=13): tests[0]: 'response_size' applies to tests rr"),
    ("seed=-3", "(--set seed=-3): top level: 'seed' must be between 0 and 4294967295"),
    ("tests.1.name=stream-64", "(--set tests.1.name=stream-64): tests[1]: duplicate test name 'stream-64'"),
])
def test_a_bad_override_is_an_error_naming_it(pb, given, message):
    with pytest.raises(PlaybookError) as exc:
        overrides.load(pb, [given])
    assert message in str(exc.value)


@pytest.mark.parametrize("path", sorted((REPO / "playbooks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_playbook_takes_a_shorter_duration(path):
    p = overrides.load(path, ["duration=1", "repeats=1"])
    assert all(t.duration == 1.0 and t.repeats == 1 for t in p.tests)
    assert [c.label for c in p.cases()] == [c.label for c in load_playbook(path).cases() if c.repeat == 0]


def test_run_json_records_the_resolved_playbook_and_the_overrides(tmp_path, monkeypatch):
    runner, _client = iso_runner(tmp_path)
    monkeypatch.setattr(runner, "check_native", lambda: None)
    monkeypatch.setattr(runner, "prepare", lambda guests: {g: {} for g in guests})
    path = tmp_path / "iso.yaml"
    path.write_text(ISO_PB)
    playbook = overrides.load(path, ["duration=2", "size=[64, 128]"])
    run_json, _bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    recorded = results.load_run(run_json)["playbook"]
    assert recorded["overrides"] == ["duration=2", "size=[64, 128]"]
    assert recorded["text"] == playbook.text and "duration: 2" in recorded["text"]
    assert recorded["sha256"] == hashlib.sha256(playbook.text.encode()).hexdigest()
    assert recorded["source_sha256"] == hashlib.sha256(ISO_PB.encode()).hexdigest()
    assert [c["size"] for c in results.load_run(run_json)["cases"]] == [64, 128]
