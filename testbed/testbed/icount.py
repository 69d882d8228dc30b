"""QEMU's instruction counting (`-icount`): guest time from executed instructions, not from the host's clock.

Why: under TCG on a shared host, guest time advances with the host's wall clock, so another developer's load
slows the guest's CPU but not its clock, and the figures a guest measures move with the host's load. With
`-icount shift=N` QEMU advances the guest's virtual clock by 2^N ns per executed instruction while a vCPU runs,
so a guest-timed run of the same work takes the same guest time however busy the host is. `shift=auto` lets
QEMU adjust the shift to keep guest time near real time (less deterministic, but no time drift).

The rules are QEMU 10's (`-icount [shift=N|auto][,align=on|off][,sleep=on|off]`, qemu-options.hx): N is 0..10;
`sleep=off` (guest time jumps to the next timer deadline while the vCPU idles, instead of following real time)
goes neither with `shift=auto` nor with `align=on`, and `align=on` (slow the guest down to real time) needs a
fixed shift. icount works only with TCG and only single-threaded: QEMU refuses `-accel tcg,thread=multi` with
it and, without the option, runs every vCPU of a guest on one host thread (`ALL CPUs/TCG`).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SHIFT = 10  # QEMU's MAX_ICOUNT_SHIFT: `-icount shift=11` is "Invalid shift value"
TCG_THREAD = "single"  # what QEMU runs under icount; recorded so a reader knows the vCPUs shared one host thread


@dataclass(frozen=True)
class Icount:
    """One `-icount` setting: shift None is `auto`; sleep and align as QEMU's sub-options (defaults on, off)."""

    shift: int | None
    sleep: bool = True
    align: bool = False

    def qemu_arg(self) -> str:
        """The value of QEMU's `-icount`, e.g. `shift=auto` or `shift=3,sleep=off`; defaults left out."""
        parts = [f"shift={'auto' if self.shift is None else self.shift}"]
        if not self.sleep:
            parts.append("sleep=off")
        if self.align:
            parts.append("align=on")
        return ",".join(parts)

    def record(self) -> dict:
        """What topology.json and run.json keep: the settings, the QEMU argument and the TCG threading."""
        return {"shift": "auto" if self.shift is None else self.shift, "sleep": self.sleep, "align": self.align,
                "qemu_arg": self.qemu_arg(), "tcg_thread": TCG_THREAD}


def parse(text: str) -> Icount:
    """`--icount`: `SHIFT` (0..10) or `auto`, optionally followed by `,sleep=on|off` and `,align=on|off`;
    a ValueError says what is wrong (the combinations QEMU refuses included)."""
    head, *rest = [p.strip() for p in text.strip().split(",")]
    head = head.removeprefix("shift=")
    if head == "auto":
        shift = None
    elif head.isdigit() and int(head) <= MAX_SHIFT:
        shift = int(head)
    else:
        raise ValueError(f"--icount: the shift must be 0..{MAX_SHIFT} or auto, not {head!r}")
    flags = {"sleep": True, "align": False}
    for part in rest:
        key, sep, value = part.partition("=")
        if key not in flags or not sep or value not in ("on", "off"):
            raise ValueError(f"--icount: {part!r} is not sleep=on|off or align=on|off")
        flags[key] = value == "on"
    spec = Icount(shift, sleep=flags["sleep"], align=flags["align"])
    if not spec.sleep and (shift is None or spec.align):
        raise ValueError("--icount: sleep=off goes neither with shift=auto nor with align=on (QEMU refuses both)")
    if spec.align and shift is None:
        raise ValueError("--icount: align=on needs a fixed shift, not auto (QEMU refuses it)")
    return spec
