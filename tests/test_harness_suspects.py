"""Suspect marks (harness.suspects): each reason on a record that has it, none on a clean one."""

from __future__ import annotations

from testbed.harness import suspects


def _case(**extra) -> dict:
    case = {"status": "ok", "duration": 10.0, "intervals": 1, "isoperf": {"duration": 10.2},
            "tcp": {"client": {"rto_timeouts": 0}, "server": {"rto_timeouts": 0}},
            "host_load": {"before": {"1m": 3.0}, "after": {"1m": 3.4}}}
    case.update(extra)
    return case


def test_a_clean_case_has_no_marks():
    assert suspects.case_marks(_case(), cpus=2) == []
    assert suspects.group_marks([_case(), _case()], cpus=2) == []


def test_each_reason_gives_its_mark():
    assert suspects.case_marks(_case(isoperf={"duration": 11.2})) == ["overrun"]  # 12 % over
    assert suspects.case_marks(_case(isoperf={"duration": 10.9})) == []  # 9 % over
    assert suspects.case_marks(_case(isoperf={"duration": 33.5}, intervals=3)) == ["overrun"]
    assert suspects.case_marks(_case(isoperf={"duration": 30.5}, intervals=3)) == []  # 3 x 10 s asked
    assert suspects.case_marks(_case(tcp={"client": {"rto_timeouts": 0}, "server": {"rto_timeouts": 2}})) == ["RTO"]
    assert suspects.case_marks(_case(isostackd=[{"stats": {"tx_stranded": 0}}, {"stats": {"tx_stranded": 1}}])) == [
        "stranded"]
    moved = {"before": {"1m": 1.0}, "after": {"1m": 2.5}}
    assert suspects.case_marks(_case(host_load=moved), cpus=2) == ["load"]  # 1.5 > 0.5 per CPU x 2
    assert suspects.case_marks(_case(host_load=moved), cpus=4) == []  # 1.5 < 0.5 x 4


def test_a_failed_repeat_marks_its_case_and_marks_come_in_legend_order():
    failed = _case(status="failed", isoperf=None, tcp={"client": {"rto_timeouts": 3}})
    assert suspects.case_marks(failed) == ["RTO"]  # the row's status already says failed
    assert suspects.group_marks([_case(isoperf={"duration": 12.0}), failed]) == ["overrun", "RTO", "failed"]
    assert suspects.legend({"failed", "RTO"}) == [f"RTO: {suspects.LEGEND['RTO']}",
                                                  f"failed: {suspects.LEGEND['failed']}"]


def test_records_without_the_readings_are_not_marked():
    # runs stored before host_load, unreadable tcp counters, a failed case without isoperf figures
    old = {"status": "ok", "duration": 10.0, "isoperf": {}, "tcp": {"client": {"error": "unreadable"}}}
    assert suspects.case_marks(old) == []
    assert suspects.case_marks({"status": "ok"}) == []
