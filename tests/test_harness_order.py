"""The run order of a playbook's cases (order.arrange): interleaved rounds, shuffled rounds, sequential."""

from __future__ import annotations

import pytest

from testbed.harness import order
from testbed.harness.playbook import parse_playbook

PB = """\
version: 1
name: order
defaults:
  duration: 1
tests:
  - name: a
    test: stream
    size: [64, 1448]
    stack: [legacy, iso]
    repeats: 3
  - name: b
    test: rr
    size: 64
    repeats: 2
"""


def _names(cases) -> list[str]:
    return [f"{c.spec.name}/{c.stack}/{c.size}#{c.repeat}" for c in cases]


def test_interleaved_runs_every_case_once_per_round_in_matrix_order():
    cases = parse_playbook(PB, "o.yaml").cases()
    arranged = order.arrange(cases, "interleaved")
    points = ["a/legacy/64", "a/legacy/1448", "a/iso/64", "a/iso/1448", "b/legacy/64"]
    # b has two repeats: it drops out of the third round
    assert _names(arranged) == ([f"{p}#0" for p in points] + [f"{p}#1" for p in points]
                                + [f"{p}#2" for p in points[:4]])
    assert sorted(_names(arranged)) == sorted(_names(cases))


def test_sequential_keeps_the_repeats_back_to_back():
    cases = parse_playbook(PB, "o.yaml").cases()
    assert order.arrange(cases, "sequential") == cases
    assert _names(cases)[:3] == ["a/legacy/64#0", "a/legacy/64#1", "a/legacy/64#2"]


def test_shuffled_permutes_each_round_reproducibly_from_its_seed():
    cases = parse_playbook(PB, "o.yaml").cases()
    first = order.arrange(cases, "shuffled", seed=7)
    assert first == order.arrange(cases, "shuffled", seed=7)
    assert sorted(_names(first)) == sorted(_names(cases))
    # each round still holds repeat k of every case: rounds stay whole, only their order changes
    assert [c.repeat for c in first] == [0] * 5 + [1] * 5 + [2] * 4
    orders = {tuple(_names(order.arrange(cases, "shuffled", seed=s))) for s in range(20)}
    assert len(orders) > 10  # the seed matters
    assert order.describe(first)[0] == first[0].label


def test_unknown_order_and_shuffle_without_seed_are_errors():
    cases = parse_playbook(PB, "o.yaml").cases()
    with pytest.raises(ValueError, match="unknown run order 'random'"):
        order.arrange(cases, "random")
    with pytest.raises(ValueError, match="needs a seed"):
        order.arrange(cases, "shuffled")
