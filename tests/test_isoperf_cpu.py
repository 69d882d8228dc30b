"""isoperf.cpu: busy % per CPU from /proc/stat."""

from __future__ import annotations

import pytest

import isoperf.cpu

PROC_STAT_BEFORE = """\
cpu  100 0 50 800 50 0 0 0 0 0
cpu0 60 0 20 400 20 0 0 0 0 0
cpu1 40 0 30 400 30 0 0 0 10 0
intr 12345 0 0
ctxt 999
btime 1700000000
processes 10
"""


PROC_STAT_AFTER = """\
cpu  250 0 100 1000 50 0 0 0 0 0
cpu0 160 0 40 450 20 0 0 0 0 0
cpu1 90 0 60 550 30 0 0 0 10 0
intr 22345 0 0
"""


def test_parse_proc_stat_reads_every_cpu_line():
    cpus = isoperf.cpu.parse_proc_stat(PROC_STAT_BEFORE)
    assert set(cpus) == {"all", "cpu0", "cpu1"}
    # total excludes guest/guest_nice (already in user): 60+20+400+20 = 500
    assert cpus["cpu0"] == isoperf.cpu.CpuTimes(busy=80, total=500)
    assert cpus["cpu1"] == isoperf.cpu.CpuTimes(busy=70, total=500)


def test_cpu_busy_percent_over_interval():
    before = isoperf.cpu.parse_proc_stat(PROC_STAT_BEFORE)
    after = isoperf.cpu.parse_proc_stat(PROC_STAT_AFTER)
    busy = isoperf.cpu.cpu_busy_percent(before, after)
    # cpu0: busy +120 of total +170; cpu1: busy +80 of +230; all: +200 of +400
    assert busy == {"all": 50.0, "cpu0": round(100 * 120 / 170, 2), "cpu1": round(100 * 80 / 230, 2)}


def test_cpu_busy_percent_idle_interval_is_zero():
    before = isoperf.cpu.parse_proc_stat(PROC_STAT_BEFORE)
    assert isoperf.cpu.cpu_busy_percent(before, before)["cpu0"] == 0.0


def test_parse_proc_stat_rejects_text_without_cpu_lines():
    with pytest.raises(ValueError):
        isoperf.cpu.parse_proc_stat("intr 1 2 3\n")


def test_read_proc_stat_on_this_host():
    cpus = isoperf.cpu.read_proc_stat()
    assert "all" in cpus and "cpu0" in cpus
