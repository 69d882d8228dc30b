"""The playbook loader (testbed/harness/playbook.py).

Contract: parse_playbook raises PlaybookError and nothing else, whatever the text; a playbook that loads
expands into its cases, and its own text loads into an equal playbook.

Input: the YAML text (bytes decoded as UTF-8, undecodable bytes replaced).
"""

from __future__ import annotations

from testbed.harness.playbook import PlaybookError, parse_playbook

TARGETS = ("testbed.harness.playbook",)


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        pb = parse_playbook(text, "fuzz.yaml")
    except PlaybookError:
        return
    cases = pb.cases()
    assert all(c.repeat < c.spec.repeats for c in cases)
    assert parse_playbook(pb.text, "fuzz.yaml") == pb
