"""Playbook loading: the shipped playbooks, matrices, defaults, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.harness.playbook import PlaybookError, load_playbook, parse_playbook

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
version: 1
name: matrix
description: sizes x connections
defaults:
  duration: 5
  warmup: 0.5
  verify: true
tests:
  - name: stream-small
    test: stream
    size: [64, 1448]
    connections: [1, 4]
    repeats: 2
    client: iso-b
    server: iso-a
  - name: stream-big
    test: stream
    size: 65536
    duration: 2
    verify: false
    port: 6000
"""


def test_smoke_playbook_is_the_seeds_headline_in_a_few_minutes():
    pb = load_playbook(REPO / "playbooks" / "smoke.yaml")
    (spec,) = pb.tests
    assert (spec.test, spec.sizes, spec.connections, spec.stacks, spec.repeats, pb.order) == (
        "stream", (64,), (1, 4), ("legacy", "iso"), 3, "interleaved")
    assert (spec.client, spec.server) == ("iso-a", "peer")
    cases = pb.cases()
    assert len(cases) == 12 and sum(c.spec.warmup + c.spec.duration for c in cases) <= 60  # measured: <= 1 min


# playbook -> (test, sizes, connections, stacks, locks, instances, client, server)
FIGURES = {
    "tx-throughput": ("stream", (64, 256, 1024, 4096, 16384, 65536), (1,), ("legacy", "iso"), (False,), (1,),
                      "iso-a", "peer"),
    "rx-throughput": ("stream", (64, 256, 1024, 4096, 16384, 65536), (1,), ("legacy",), (False,), (1,),
                      "peer", "iso-a"),  # and server_stack [legacy, iso]: the guest receives on both stacks
    "tx-64b-connections": ("stream", (64,), (1, 4, 16, 64), ("legacy", "iso"), (False,), (1,), "iso-a", "peer"),
    "uncontended-locks": ("stream", (64,), (1, 4, 16), ("iso",), (False, True), (1,), "iso-a", "peer"),
    "multi-instance": ("stream", (64,), (4, 16), ("iso",), (False,), (1, 2), "iso-a", "peer"),
    "rr-latency": ("rr", (64, 256, 1024, 4096, 16384), (1,), ("legacy", "iso"), (False,), (1,), "iso-a", "peer"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_playbook_per_seed_figure_with_its_description_and_ci_sized_defaults(name):
    path = REPO / "playbooks" / f"{name}.yaml"
    pb = load_playbook(path)
    (spec,) = pb.tests
    assert pb.name == name and pb.description
    assert (spec.test, spec.sizes, spec.connections, spec.stacks, spec.locks, spec.instances, spec.client,
            spec.server) == FIGURES[name]
    assert spec.repeats == 3 and spec.duration <= 3 and pb.order == "interleaved"  # intervals, CI-sized
    header = path.read_text().split("\nversion: 1")[0]
    assert header.startswith("# Seed figure: ")
    if name == "multi-instance":
        assert "testbed up --vcpus 3 --queues 2" in header
    if name == "rx-throughput":
        assert spec.server_stacks == ("legacy", "iso")
        assert {c.stack_label for c in pb.cases()} == {"legacy", "legacy→iso"}


def test_isostack_64b_playbook_is_the_seeds_experiment():
    pb = load_playbook(REPO / "playbooks" / "isostack-64b.yaml")
    (spec,) = pb.tests
    assert (spec.test, spec.sizes, spec.connections, spec.stacks, spec.duration, spec.warmup) == (
        "stream",
        (64,),
        (1, 4, 16),
        ("legacy", "iso"),
        10.0,
        2.0,
    )
    assert spec.locks == (False, True)
    cases = pb.cases()
    assert spec.repeats == 3  # the comparison table takes the medians
    assert [(c.stack_label, c.connections) for c in cases][::3] == [
        ("legacy", 1), ("legacy", 4), ("legacy", 16),
        ("iso", 1), ("iso", 4), ("iso", 16),
        ("iso+locks", 1), ("iso+locks", 4), ("iso+locks", 16),
    ]
    assert len(cases) == 27


@pytest.mark.parametrize(
    "locks, message",
    [
        ("locks: maybe", "'locks' must be true, false or a list of distinct ones"),
        ("locks: [true, true]", "'locks' must be true, false or a list of distinct ones"),
        ("locks: []", "'locks' must be true, false or a list of distinct ones"),
    ],
)
def test_bad_locks(locks, message):
    assert message in _error(GOOD.replace("    repeats: 2\n", f"    repeats: 2\n    stack: iso\n    {locks}\n", 1))


def test_locks_true_needs_stack_iso():
    msg = _error(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    locks: true\n", 1))
    assert "'locks: true' is an isostackd option: it needs stack iso" in msg


def test_stack_iso_is_accepted_as_a_matrix_axis():
    pb = parse_playbook(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    stack: [legacy, iso]\n", 1))
    assert {c.stack for c in pb.cases()} == {"legacy", "iso"}


@pytest.mark.parametrize("path", sorted((REPO / "playbooks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_playbook_loads(path):
    assert load_playbook(path).cases()


def test_defaults_matrix_and_repeats():
    pb = parse_playbook(GOOD, "m.yaml")
    small, big = pb.tests
    assert small.duration == 5.0 and small.warmup == 0.5 and small.verify is True and small.port == 5701
    assert big.duration == 2.0 and big.verify is False and big.port == 6000 and big.warmup == 0.5
    assert big.client is None and big.stacks == ("legacy",)
    cases = pb.cases()
    assert len(cases) == 2 * 2 * 2 + 1
    assert [(c.size, c.connections, c.repeat) for c in cases[:4]] == [(64, 1, 0), (64, 1, 1), (64, 4, 0), (64, 4, 1)]
    assert cases[-1].spec.name == "stream-big"
    assert pb.sha256 == parse_playbook(GOOD, "other.yaml").sha256


def _error(text: str) -> str:
    with pytest.raises(PlaybookError) as exc:
        parse_playbook(text, "pb.yaml")
    return str(exc.value)


def test_unknown_key_in_a_test_names_key_file_and_line():
    msg = _error(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    sise: 64\n"))
    assert msg.startswith("pb.yaml:14: tests[0]: unknown key 'sise'")
    assert "did you mean 'size'?" in msg


def test_unknown_key_at_top_level_and_in_defaults():
    assert _error("version: 1\nname: x\ntest: []\ntests: []\n").startswith("pb.yaml:3: top level: unknown key 'test'")
    msg = _error(GOOD.replace("  verify: true\n", "  verfy: true\n", 1))
    assert msg.startswith("pb.yaml:7: defaults: unknown key 'verfy'")


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("version: 1\n", "version: 2\n", "pb.yaml:1: version: must be 1, got 2"),
        ("name: matrix\n", "name: 12\n", "pb.yaml:2: top level: 'name' must be a non-empty string, got an integer"),
        (
            "    size: 65536\n",
            "    size: big\n",
            "pb.yaml:18: tests[1]: 'size' must be an integer or a list of them, got a",
        ),
        ("    size: 65536\n", "    size: true\n", "'size' must be an integer or a list of them, got a boolean"),
        ("    size: 65536\n", "    size: []\n", "'size' must be an integer or a list of them, got an empty list"),
        ("    size: 65536\n", "    size: [64, 64]\n", "'size' lists a value twice"),
        ("    size: 65536\n", "    size: 0\n", "'size' must be between 1 and 1048576, got 0"),
        ("    duration: 2\n", "    duration: two\n", "pb.yaml:19: tests[1]: 'duration' must be a number, got a string"),
        ("    duration: 2\n", "    duration: 0\n", "duration must be > 0 seconds"),
        ("  warmup: 0.5\n", "  warmup: -1\n", "warmup must be >= 0 seconds"),
        ("    duration: 2\n", "    duration: .nan\n", "'duration' must be a finite number, got nan"),
        ("    verify: false\n", "    verify: 'no'\n", "'verify' must be true or false, got a string"),
        ("    repeats: 2\n", "    repeats: [1, 2]\n", "'repeats' must be an integer, got a list"),
        ("    port: 6000\n", "    port: 70000\n", "'port' must be between 1 and 65535"),
        (
            "    test: stream\n    size: 65536",
            "    test: udp_rr\n    size: 65536",
            "test 'udp_rr' is not supported (supported: stream, maerts, rr, crr)",
        ),
        ("    repeats: 2\n", "    repeats: 2\n    stack: dpdk\n", "unknown stack 'dpdk'"),
        ("    server: iso-a\n", "    server: iso-b\n", "client and server are the same guest 'iso-b'"),
        (
            "  - name: stream-big\n",
            "  - name: stream-small\n",
            "pb.yaml:16: tests[1]: duplicate test name 'stream-small'",
        ),
        ("    size: 65536\n", "    size: 8\n", "verify needs size >= 13"),
    ],
)
def test_bad_values(old, new, expected):
    text = GOOD.replace(old, new)
    assert text != GOOD
    if "verify needs" in expected:
        text = text.replace("    verify: false\n", "")
    assert expected in _error(text)


def test_missing_required_keys():
    assert "pb.yaml:1: top level: missing required key 'tests'" in _error("version: 1\nname: x\n")
    assert "missing required key 'version'" in _error("name: x\ntests: []\n")
    msg = _error("version: 1\nname: x\ntests:\n  - name: t\n    test: stream\n    duration: 1\n")
    assert "pb.yaml:4: tests[0]: missing required key 'size' (not in defaults either)" in msg


def test_wrong_shapes():
    assert "pb.yaml:3: tests: expected a non-empty list, got an empty list" in _error(
        "version: 1\nname: x\ntests: []\n"
    )
    assert "tests: expected a non-empty list, got a mapping" in _error("version: 1\nname: x\ntests: {a: 1}\n")
    assert "tests[0]: expected a mapping, got a string" in _error("version: 1\nname: x\ntests: [oops]\n")
    assert "defaults: expected a mapping, got a list" in _error("version: 1\nname: x\ndefaults: []\ntests: [a]\n")
    assert "top level: expected a mapping, got a list" in _error("- 1\n- 2\n")
    assert "the playbook is empty" in _error("# nothing\n")


def test_duplicate_keys_and_yaml_syntax_errors_have_lines():
    assert _error("version: 1\nname: x\nname: y\ntests: []\n").startswith(
        "pb.yaml:3: duplicate key 'name' (first at line 2)"
    )
    assert _error("version: 1\nname: [x\n").startswith("pb.yaml:3: not valid YAML")


@pytest.mark.parametrize("text, message", [
    ("? [a]\n: 1\n", "pb.yaml:1: a key must be a plain value, not a list"),
    ("version: 1\n{a: 1}: 2\n", "pb.yaml:2: a key must be a plain value, not a mapping"),
    ("? !!set {a}\n: 1\n", "pb.yaml:1: a key must be a plain value, not set"),
    ("[" * 1500, "pb.yaml: not valid YAML: nested too deeply"),
])
def test_unhashable_keys_and_deep_nesting_are_playbook_errors(text, message):
    """Found by fuzz/playbook.py (keys; nesting by hand): a TypeError and a RecursionError escaped the loader."""
    assert _error(text).startswith(message)


def test_unreadable_file(tmp_path):
    with pytest.raises(PlaybookError, match="cannot read playbook"):
        load_playbook(tmp_path / "missing.yaml")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(-1, 2000), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        [
            "version",
            "name",
            "tests",
            "defaults",
            "size",
            "connections",
            "stack",
            "duration",
            "warmup",
            "verify",
            "repeats",
            "client",
            "server",
            "port",
            "locks",
            "test",
            "bogus",
        ]
    ),
    value=_VALUES,
    where=st.sampled_from(["top", "defaults", "test"]),
)
def test_any_value_anywhere_gives_a_playbook_or_a_playbook_error(key, value, where):
    """No input makes the loader fail with anything but PlaybookError (which names the file)."""
    import yaml

    doc = yaml.safe_load(GOOD)
    target = {"top": doc, "defaults": doc["defaults"], "test": doc["tests"][0]}[where]
    target[key] = value
    try:
        pb = parse_playbook(yaml.safe_dump(doc), "fuzz.yaml")
    except PlaybookError as e:
        assert str(e).startswith("fuzz.yaml")
    else:
        for case in pb.cases():
            assert 0 < case.spec.duration < float("inf") and 0 <= case.spec.warmup < float("inf")
            assert case.size >= 1 and case.connections >= 1 and 1 <= case.spec.port <= 65535


def test_rr_playbook_runs_both_stacks_with_one_and_four_connections():
    pb = load_playbook(REPO / "playbooks" / "rr.yaml")
    (spec,) = pb.tests
    assert (spec.test, spec.sizes, spec.connections, spec.stacks, spec.verify, spec.crosscheck) == (
        "rr", (64,), (1, 4), ("legacy", "iso"), True, True
    )
    assert sorted((c.stack, c.connections) for c in pb.cases()) == [
        ("iso", 1), ("iso", 4), ("legacy", 1), ("legacy", 4)
    ]


NEW_KEYS = """\
version: 1
name: kinds
tests:
  - name: t
    test: {test}
    size: 64
    duration: 1
{extra}"""


@pytest.mark.parametrize("test", ["stream", "maerts", "rr", "crr"])
def test_every_isoperf_test_kind_is_accepted(test):
    (spec,) = parse_playbook(NEW_KEYS.format(test=test, extra="")).tests
    assert spec.test == test
    assert (spec.response_size, spec.intervals, spec.cpu, spec.crosscheck) == (None, 1, None, False)


def test_new_keys_are_read_and_inherited_from_defaults():
    extra = "    response_size: 1024\n    intervals: 3\n    cpu: 1\n    sndbuf: 65536\n"
    text = NEW_KEYS.format(test="crr", extra=extra)
    (spec,) = parse_playbook(text).tests
    assert (spec.response_size, spec.intervals, spec.cpu, spec.sndbuf) == (1024, 3, 1, 65536)
    text = text.replace("tests:\n", "defaults:\n  intervals: 5\ntests:\n").replace("    intervals: 3\n", "")
    assert parse_playbook(text).tests[0].intervals == 5


@pytest.mark.parametrize(
    "test, extra, expected",
    [
        ("stream", "    response_size: 100\n", "pb.yaml:8: tests[0]: 'response_size' applies to tests rr and crr, "
                                               "not 'stream'"),
        ("rr", "    response_size: [1, 2]\n", "'response_size' must be an integer, got a list"),
        ("rr", "    response_size: 0\n", "'response_size' must be between 1 and 1048576, got 0"),
        ("rr", "    verify: true\n    response_size: 12\n", "'response_size' must be between 13 and 1048576"),
        ("rr", "    intervals: 0\n", "'intervals' must be between 1 and 100, got 0"),
        ("rr", "    intervals: 2.5\n", "'intervals' must be an integer, got a number"),
        ("rr", "    cpu: -1\n", "'cpu' must be between 0 and 1023, got -1"),
        ("rr", "    sndbuf: 100\n", "'sndbuf' must be between 1024 and 1073741824, got 100"),
        ("rr", "    sndbuf: [65536, 131072]\n", "'sndbuf' must be an integer, got a list"),
        ("rr", "    sndbuf: 64k\n", "'sndbuf' must be an integer, got a string"),
        ("rr", "    crosscheck: yes please\n", "'crosscheck' must be true or false, got a string"),
        ("crr", "    crosscheck: true\n", "'crosscheck' needs test stream or rr (iperf3 / sockperf), not 'crr'"),
        ("rr", "    stack: iso\n    crosscheck: true\n", "'crosscheck' compares the legacy stack with "
                                                       "iperf3/sockperf: it needs stack legacy"),
        ("rr", "    response-size: 10\n", "unknown key 'response-size'"),
        ("rr", "    crosschek: true\n", "did you mean 'crosscheck'?"),
    ],
)
def test_new_keys_bad_values(test, extra, expected):
    with pytest.raises(PlaybookError) as exc:
        parse_playbook(NEW_KEYS.format(test=test, extra=extra), "pb.yaml")
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_did_you_mean_for_response_size():
    with pytest.raises(PlaybookError, match="did you mean 'response_size'"):
        parse_playbook(NEW_KEYS.format(test="rr", extra="    response-size: 10\n"), "pb.yaml")


# ------------------------------------------------------------ isostackd instances and busy polling


def test_isostack_instances_playbook_runs_one_and_two_instances():
    pb = load_playbook(REPO / "playbooks" / "isostack-instances.yaml")
    (spec,) = pb.tests
    assert (spec.test, spec.sizes, spec.connections, spec.instances) == ("stream", (64,), (4, 16), (1, 2))
    assert spec.instances_line == 20  # the error that asks for a bigger testbed names this line
    assert [(c.stack_label, c.connections) for c in pb.cases()] == [
        ("legacy", 4), ("legacy", 16), ("iso", 4), ("iso", 16), ("iso×2", 4), ("iso×2", 16),
    ]
    assert "testbed up --queues 2 --vcpus 3" in pb.text


def test_instances_is_a_matrix_axis_of_stack_iso_only():
    pb = parse_playbook(GOOD.replace("    repeats: 2\n", "    repeats: 1\n    stack: [legacy, iso]\n"
                                     "    instances: [1, 3]\n    locks: [false, true]\n", 1))
    labels = [c.stack_label for c in pb.cases() if c.spec.name == "stream-small"]
    assert labels.count("legacy") == 4  # 2 sizes x 2 connection counts, once
    assert labels.count("iso") == labels.count("iso×3") == labels.count("iso×3+locks") == 4
    assert pb.tests[0].instances_line == 15
    assert pb.tests[1].instances == (1,) and pb.tests[1].so_busy_poll_us is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("instances: 0", "pb.yaml:15: tests[0]: 'instances' must be between 1 and 16, got 0"),
        ("instances: 17", "pb.yaml:15: tests[0]: 'instances' must be between 1 and 16, got 17"),
        ("instances: [1, 1]", "pb.yaml:15: tests[0]: 'instances' lists a value twice: [1, 1]"),
        ("instances: two", "pb.yaml:15: tests[0]: 'instances' must be an integer or a list of them, got a string"),
        ("instances: true", "pb.yaml:15: tests[0]: 'instances' must be an integer or a list of them, got a boolean"),
        ("so_busy_poll_us: -1", "pb.yaml:15: tests[0]: 'so_busy_poll_us' must be between 0 and 1000000, got -1"),
        ("so_busy_poll_us: [0, 50]", "pb.yaml:15: tests[0]: 'so_busy_poll_us' must be an integer, got a list"),
        ("so_busy_poll_us: 1.5", "pb.yaml:15: tests[0]: 'so_busy_poll_us' must be an integer, got a number"),
        ("so_busy_poll_us: 50us", "pb.yaml:15: tests[0]: 'so_busy_poll_us' must be an integer, got a string"),
        ("so_busy_pol_us: 50", "did you mean 'so_busy_poll_us'?"),
    ],
)
def test_bad_instances_and_so_busy_poll_us(line, message):
    assert message in _error(GOOD.replace("    repeats: 2\n", f"    repeats: 2\n    stack: iso\n    {line}\n", 1))


def test_instances_and_so_busy_poll_need_stack_iso():
    msg = _error(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    instances: [1, 2]\n", 1))
    assert msg == "pb.yaml:14: tests[0]: 'instances' is the number of isostackd instances: it needs stack iso"
    msg = _error(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    so_busy_poll_us: 0\n", 1))
    assert msg.startswith("pb.yaml:14: tests[0]: 'so_busy_poll_us' is an isostackd option")
    # instances: 1 is the default, harmless for legacy
    assert parse_playbook(GOOD.replace("    repeats: 2\n", "    repeats: 2\n    instances: 1\n", 1)).cases()


@pytest.mark.parametrize(
    "line, message",
    [
        ("nap_max_us: -1", "pb.yaml:15: tests[0]: 'nap_max_us' must be between 0 and 1000000, got -1"),
        ("nap_max_us: 1000001", "pb.yaml:15: tests[0]: 'nap_max_us' must be between 0 and 1000000, got 1000001"),
        ("nap_max_us: [0, 1000]", "pb.yaml:15: tests[0]: 'nap_max_us' must be an integer, got a list"),
        ("nap_max_us: 2.5", "pb.yaml:15: tests[0]: 'nap_max_us' must be an integer, got a number"),
        ("nap_max_us: 1ms", "pb.yaml:15: tests[0]: 'nap_max_us' must be an integer, got a string"),
        ("nap_max_us: true", "pb.yaml:15: tests[0]: 'nap_max_us' must be an integer, got a boolean"),
        ("nap_max_us:", "pb.yaml:15: tests[0]: 'nap_max_us' must be an integer, got nothing (null)"),
        ("epoll_busy_poll_us: -2",
         "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be between -1 and 1000000, got -2"),
        ("epoll_busy_poll_us: 1000001",
         "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be between -1 and 1000000, got 1000001"),
        ("epoll_busy_poll_us: [0, 50]", "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be an integer, got a list"),
        ("epoll_busy_poll_us: 0.5", "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be an integer, got a number"),
        ("epoll_busy_poll_us: off", "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be an integer, got a boolean"),
        ("epoll_busy_poll_us: fifty",
         "pb.yaml:15: tests[0]: 'epoll_busy_poll_us' must be an integer, got a string"),
        ("nap_max: 50", "did you mean 'nap_max_us'?"),
        ("epoll_busy_poll: 50", "did you mean 'epoll_busy_poll_us'?"),
    ],
)
def test_bad_nap_max_us_and_epoll_busy_poll_us(line, message):
    assert message in _error(GOOD.replace("    repeats: 2\n", f"    repeats: 2\n    stack: iso\n    {line}\n", 1))


@pytest.mark.parametrize("line, what", [
    ("nap_max_us: 0", "'nap_max_us' is an isostackd option (the longest coalescing nap"),
    ("epoll_busy_poll_us: 50", "'epoll_busy_poll_us' is an isostackd option (the net.core.busy_poll sysctl"),
])
def test_nap_max_and_epoll_busy_poll_need_stack_iso(line, what):
    msg = _error(GOOD.replace("    repeats: 2\n", f"    repeats: 2\n    {line}\n", 1))
    assert msg.startswith(f"pb.yaml:14: tests[0]: {what}") and msg.endswith("it needs stack iso")
    # from defaults, the line of the key in defaults is named (stream-small is legacy)
    msg = _error(GOOD.replace("  verify: true\n", f"  verify: true\n  {line}\n", 1))
    assert msg.startswith(f"pb.yaml:8: tests[0]: {what}")


def test_nap_max_and_epoll_busy_poll_values_from_tests_and_defaults():
    text = GOOD.replace("    repeats: 2\n", "    repeats: 2\n    stack: [legacy, iso]\n    nap_max_us: 0\n"
                        "    epoll_busy_poll_us: -1\n", 1)
    small, big = parse_playbook(text, "pb.yaml").tests
    assert (small.nap_max_us, small.epoll_busy_poll_us) == (0, -1)  # both at the bounds isostackd gives them
    assert (big.nap_max_us, big.epoll_busy_poll_us) == (None, None)  # not set: isostackd's defaults
    text = GOOD.replace("  verify: true\n", "  verify: true\n  stack: iso\n  nap_max_us: 1000000\n"
                        "  epoll_busy_poll_us: 1000000\n", 1)
    small, big = parse_playbook(text, "pb.yaml").tests
    assert small.nap_max_us == big.nap_max_us == small.epoll_busy_poll_us == big.epoll_busy_poll_us == 1_000_000


def test_so_busy_poll_and_instances_from_defaults():
    text = GOOD.replace("  verify: true\n", "  verify: true\n  stack: iso\n  so_busy_poll_us: 0\n  instances: 2\n", 1)
    small, big = parse_playbook(text, "pb.yaml").tests
    assert small.so_busy_poll_us == big.so_busy_poll_us == 0
    assert small.instances == big.instances == (2,)
    assert small.instances_line == 10  # the line in defaults


def test_run_order_seed_and_interval_at_the_top_level():
    pb = parse_playbook(GOOD, "m.yaml")
    assert (pb.order, pb.seed, pb.interval_s) == ("interleaved", None, 0.0)  # the defaults
    text = GOOD.replace("description: sizes x connections\n",
                        "description: sizes x connections\norder: shuffled\nseed: 42\ninterval_s: 2.5\n")
    pb = parse_playbook(text, "m.yaml")
    assert (pb.order, pb.seed, pb.interval_s) == ("shuffled", 42, 2.5)
    assert parse_playbook(text.replace("shuffled", "sequential"), "m.yaml").order == "sequential"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("order: random\n", "pb.yaml:4: order: must be one of interleaved, shuffled, sequential, got 'random'"),
        ("order: 3\n", "pb.yaml:4: top level: 'order' must be a non-empty string, got an integer"),
        ("seed: -1\n", "pb.yaml:4: top level: 'seed' must be between 0 and 4294967295, got -1"),
        ("seed: 1.5\n", "pb.yaml:4: top level: 'seed' must be an integer, got a number"),
        ("seed: [1, 2]\n", "pb.yaml:4: top level: 'seed' must be an integer, got a list"),
        ("interval_s: -1\n", "pb.yaml:4: top level: 'interval_s' must be between 0 and 3600 seconds, got -1"),
        ("interval_s: soon\n", "pb.yaml:4: top level: 'interval_s' must be a number, got a string"),
        ("ordre: shuffled\n", "pb.yaml:4: top level: unknown key 'ordre'"),
    ],
)
def test_bad_run_order_keys_name_file_and_line(line, expected):
    msg = _error(GOOD.replace("description: sizes x connections\n", "description: sizes x connections\n" + line))
    assert msg.startswith(expected)
    if line.startswith("ordre"):
        assert "did you mean 'order'?" in msg


# ------------------------------------------------------------ placement: the application vs the NIC's interrupts

PLACED = """\
version: 1
name: placed
tests:
  - name: stream-64
    test: stream
    size: 64
    duration: 1
    stack: [legacy, iso]
"""


def test_placement_defaults_to_apart_and_stays_out_of_the_labels():
    cases = parse_playbook(PLACED).cases()
    assert [(c.stack, c.placement, c.placement_axis) for c in cases] == [("legacy", "apart", False),
                                                                         ("iso", "apart", False)]
    assert cases[0].label == "stream-64 legacy size=64 conns=1 #1"


def test_placement_is_a_matrix_axis_named_in_the_labels():
    pb = parse_playbook(PLACED + "    placement: [apart, irq, spread]\n    repeats: 2\n")
    cases = pb.cases()
    assert len(cases) == 2 * 3 * 2 and pb.placement_axis
    assert [c.stack_label for c in cases if c.repeat == 0] == [
        "legacy@apart", "legacy@irq", "legacy@spread", "iso@apart", "iso@irq", "iso@spread"]
    assert cases[2].label == "stream-64 legacy@irq size=64 conns=1 #1"


def test_placement_axis_counts_over_the_playbook_not_the_test():
    """One test on `irq`, another on the default: the labels name the placement in both, so the report
    never shows two layouts under one name."""
    text = PLACED + "    placement: irq\n  - name: other\n    test: rr\n    size: 64\n    duration: 1\n"
    labels = {c.label for c in parse_playbook(text).cases()}
    assert "stream-64 iso@irq size=64 conns=1 #1" in labels and "other legacy@apart size=64 conns=1 #1" in labels
    single = parse_playbook(PLACED + "    placement: spread\n").cases()
    assert [c.stack_label for c in single] == ["legacy", "iso"] and single[0].placement == "spread"


def test_placement_from_defaults_and_cpu_keeps_the_os_default():
    text = PLACED.replace("tests:\n", "defaults:\n  placement: irq\ntests:\n")
    assert {c.placement for c in parse_playbook(text).cases()} == {"irq"}
    # `cpu` pins the client's threads itself: the NIC keeps the OS default (the layout before the axis)
    assert {c.placement for c in parse_playbook(PLACED + "    cpu: 0\n").cases()} == {"spread"}


@pytest.mark.parametrize(("extra", "message"), [
    ("    placement: apartt\n", "9: tests[0]: unknown placement 'apartt' (choose from apart, irq, spread);"
                              " did you mean 'apart'?"),
    ("    placement: [irq, irq]\n", "9: tests[0]: 'placement' lists a value twice"),
    ("    placement: []\n", "9: tests[0]: 'placement' must be a string or a list of them, got an empty list"),
    ("    placement: 1\n", "9: tests[0]: 'placement' must be a string or a list of them, got an integer"),
    ("    cpu: 0\n    placement: irq\n", "10: tests[0]: 'cpu' and 'placement' both say where the client runs"),
    ("    instances: [1, 2]\n    placement: [apart, irq]\n",
     "10: tests[0]: placement 'irq' puts the client on the vCPU of the NIC's interrupts, but 2 isostackd"
     " instances"),
])
def test_bad_placement_names_the_line(extra, message):
    with pytest.raises(PlaybookError) as e:
        parse_playbook(PLACED + extra, "pb.yaml")
    assert str(e.value).startswith(f"pb.yaml:{message}"), str(e.value)


def test_placement_irq_with_instances_is_fine_on_a_legacy_only_test_and_with_one_instance():
    parse_playbook(PLACED.replace("[legacy, iso]", "legacy") + "    placement: irq\n")
    parse_playbook(PLACED + "    instances: 1\n    placement: [irq, spread]\n")
    parse_playbook(PLACED + "    instances: [1, 2]\n    placement: [apart, spread]\n")


def test_stability_and_64b_playbooks_stay_on_the_default_placement():
    for name in ("stability", "isostack-64b"):
        pb = load_playbook(REPO / "playbooks" / f"{name}.yaml")
        assert {c.placement for c in pb.cases()} == {"apart"} and not pb.placement_axis


def test_server_stack_is_an_axis_labelled_client_to_server():
    cases = parse_playbook(PLACED + "    server_stack: [legacy, iso]\n").cases()
    assert [c.stack_label for c in cases] == ["legacy", "legacy→iso", "iso", "iso→iso"]
    assert [c.server_stack for c in parse_playbook(PLACED).cases()] == ["legacy", "legacy"]
    rx = parse_playbook(PLACED.replace("[legacy, iso]", "legacy") + "    client: peer\n    server: iso-a\n"
                        "    server_stack: [legacy, iso]\n").cases()
    assert [(c.stack_label, c.spec.client) for c in rx] == [("legacy", "peer"), ("legacy→iso", "peer")]


@pytest.mark.parametrize(("extra", "message"), [
    ("    server_stack: isso\n", "9: tests[0]: unknown server_stack 'isso' (choose from legacy, iso)"),
    ("    server: peer\n    server_stack: iso\n", "10: tests[0]: the peer runs isoperf natively on kernel sockets:"
                                                 " server_stack iso needs its server on a guest"),
])
def test_bad_server_stack_names_the_line(extra, message):
    with pytest.raises(PlaybookError) as e:
        parse_playbook(PLACED + extra, "pb.yaml")
    assert str(e.value).startswith(f"pb.yaml:{message}"), str(e.value)


def test_server_stack_column_and_its_legacy_baseline():
    from testbed.harness import results

    record = {"stack": "legacy", "server_stack": "iso", "locks": False, "instances": 1}
    assert results.stack_column(record) == "legacy→iso"
    assert results.legacy_column(record) == "legacy"
    assert results.stack_column({"stack": "iso", "locks": False}) == "iso"  # records before the key
