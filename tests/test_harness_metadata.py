"""Host metadata for run.json: the CPU model and the load average (harness.metadata)."""

from __future__ import annotations

from testbed.harness import metadata

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme

processor\t: 1
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
"""


def test_cpu_model_is_the_first_model_name(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert metadata.cpu_model(tmp_path / "cpuinfo") == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert metadata.cpu_model(tmp_path / "arm") is None
    assert metadata.cpu_model(tmp_path / "missing") is None


def test_loadavg_is_parsed_and_missing_is_none(tmp_path):
    assert metadata.parse_loadavg("0.52 0.58 0.59 1/467 12345\n") == {
        "1m": 0.52, "5m": 0.58, "15m": 0.59, "runnable": 1, "threads": 467}
    assert metadata.parse_loadavg("garbage") is None
    assert metadata.loadavg(tmp_path / "none") is None
    live = metadata.loadavg()  # this host's, when it has /proc
    assert live is None or live["1m"] >= 0


def test_host_metadata_names_the_cpu_model(tmp_path):
    host = metadata.host_metadata(tmp_path)
    assert host["host_cpu_model"] == metadata.cpu_model()
    assert host["host_cpu_model"] is None or host["host_cpu_model"].strip() == host["host_cpu_model"] != ""
