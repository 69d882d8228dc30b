"""testbed.icount: `--icount` parsed into QEMU's -icount argument, and the combinations QEMU refuses refused."""

from __future__ import annotations

import pytest

from testbed import icount


@pytest.mark.parametrize("text, shift, arg", [
    ("auto", None, "shift=auto"),
    ("0", 0, "shift=0"),
    ("shift=3", 3, "shift=3"),
    ("10", 10, "shift=10"),
    ("3,sleep=off", 3, "shift=3,sleep=off"),
    ("3, align=on", 3, "shift=3,align=on"),
    ("auto,sleep=on", None, "shift=auto"),
])
def test_parse_gives_the_shift_and_the_qemu_argument(text, shift, arg):
    spec = icount.parse(text)
    assert spec.shift == shift
    assert spec.qemu_arg() == arg


def test_record_names_the_single_threaded_tcg():
    rec = icount.parse("2,sleep=off").record()
    assert rec == {"shift": 2, "sleep": False, "align": False, "qemu_arg": "shift=2,sleep=off",
                   "tcg_thread": "single"}
    assert icount.parse("auto").record()["shift"] == "auto"


@pytest.mark.parametrize("text, message", [
    ("11", "0..10 or auto"),
    ("-1", "0..10 or auto"),
    ("", "0..10 or auto"),
    ("fast", "0..10 or auto"),
    ("3,sleep=no", "not sleep=on|off"),
    ("3,rr=record", "not sleep=on|off"),
    ("3,align", "not sleep=on|off"),
    ("auto,sleep=off", "sleep=off goes neither"),
    ("3,sleep=off,align=on", "sleep=off goes neither"),
    ("auto,align=on", "align=on needs a fixed shift"),
])
def test_parse_refuses_what_qemu_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        icount.parse(text)
