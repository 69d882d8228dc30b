"""What `testbed up` is asked for: the options, their checks, and the fingerprint that decides reuse.

Kept apart from `up` so the CLI and the tests can build and check options without starting anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from testbed import icount
from testbed.image.recipe import recipe_hash

PEER_CHOICES = ("auto", "on", "off")
GUEST_LETTERS = "abcdefghijklmnop"  # guest N (from 1) is iso-<letter N> on port <letter N>, 10.10.0.N


@dataclass
class UpOptions:
    state_dir: Path
    uri: str | None = None
    guests: int = 2
    vcpus: int = 2
    memory_mib: int = 1024
    queues: int = 1
    accel: str = "auto"
    isolate_cpus: str = ""  # guest vCPUs kept free of the scheduler, timer ticks and IRQs (e.g. "1")
    boot_timeout_s: float = 180.0
    #: vhea's 802.3x flow control on every port: a receiving guest late with rx buffers pauses the sender
    #: instead of losing TSO frames (the testbed measures the sender's stack); pause limit None: vhea's default
    flow_control: bool = True
    pause_max_us: int | None = None
    #: the native peer (testbed.peer): "auto" makes it where the host can (root, a vhea with TAP ports) and says
    #: why not elsewhere; "on" requires it; "off" leaves it out
    peer: str = "auto"
    #: QEMU's instruction counting (testbed.icount), e.g. "auto" or "3,sleep=off"; "": off (guest time is real time)
    icount: str = ""
    #: the number of this host's first guest: names, data IPs and MACs start there, so the guests of several
    #: hosts on one data network differ (docs/testbed.md, Guests on other hosts)
    first_guest: int = 1
    #: the host address the guests' SSH is forwarded from: another host's harness reaches them there
    ssh_bind: str = "127.0.0.1"

    def fingerprint(self) -> dict:
        """What decides whether a running testbed can be reused for these options."""
        fp = {"uri": self.uri, "guests": self.guests, "vcpus": self.vcpus, "memory_mib": self.memory_mib,
              "queues": self.queues, "accel": self.accel, "isolate_cpus": self.isolate_cpus,
              "flow_control": self.flow_control, "pause_max_us": self.pause_max_us, "peer": self.peer,
              "image": recipe_hash()}
        if self.icount:  # only when on, so a testbed started before --icount existed is still reused
            fp["icount"] = self.icount_spec().qemu_arg()
        if self.first_guest != 1:  # likewise
            fp["first_guest"] = self.first_guest
        if self.ssh_bind != "127.0.0.1":
            fp["ssh_bind"] = self.ssh_bind
        return fp

    def icount_spec(self) -> icount.Icount | None:
        """--icount parsed (None: off); a ValueError for a bad value."""
        return icount.parse(self.icount) if self.icount else None

    def isolated(self) -> list[int]:
        """The vCPUs of --isolate-cpus ("1", "1,3", "1-3"), checked against --vcpus."""
        return parse_cpu_list(self.isolate_cpus, self.vcpus) if self.isolate_cpus else []

    def guest_kernel_args(self) -> list[str]:
        """Kernel parameters that dedicate the isolated vCPUs, as the seed dedicates a core to the stack.

        isolcpus keeps the scheduler's load balancing off them (isostackd pins itself there), nohz_full stops the
        timer tick while one task runs, rcu_nocbs moves RCU callbacks away, and irqaffinity sends every IRQ that
        nobody placed to the other vCPUs (isostackd then moves its own NIC queues' IRQs onto its core).
        """
        cpus = self.isolated()
        if not cpus:
            return []
        iso = ",".join(map(str, cpus))
        housekeeping = ",".join(str(c) for c in range(self.vcpus) if c not in cpus)
        return [f"isolcpus={iso}", f"nohz_full={iso}", f"rcu_nocbs={iso}", f"irqaffinity={housekeeping}"]

    def validate(self) -> None:
        if not 2 <= self.guests <= 8:
            raise ValueError(f"--guests must be 2..8, not {self.guests}")
        if not 1 <= self.first_guest <= len(GUEST_LETTERS) - self.guests + 1:
            raise ValueError(f"--first-guest must be 1..{len(GUEST_LETTERS) - self.guests + 1} with --guests "
                             f"{self.guests} (at most {len(GUEST_LETTERS)} guests on one data network), "
                             f"not {self.first_guest}")
        if not 1 <= self.vcpus <= 64:
            raise ValueError(f"--vcpus must be 1..64, not {self.vcpus}")
        if not 256 <= self.memory_mib <= 65536:
            raise ValueError(f"--memory must be 256..65536 MiB, not {self.memory_mib}")
        if not 1 <= self.queues <= 16:
            raise ValueError(f"--queues must be 1..16, not {self.queues}")
        if self.pause_max_us is not None and not 1 <= self.pause_max_us <= 1_000_000:
            raise ValueError(f"--pause-max-us must be 1..1000000, not {self.pause_max_us}")
        if self.pause_max_us is not None and not self.flow_control:
            raise ValueError("--pause-max-us goes with flow control (not with --no-flow-control)")
        if self.peer not in PEER_CHOICES:
            raise ValueError(f"peer must be one of {', '.join(PEER_CHOICES)}, not {self.peer!r}")
        self.isolated()
        try:
            ipaddress.IPv4Address(self.ssh_bind)
        except ValueError:
            raise ValueError(f"--ssh-bind must be an IPv4 address of this host, not {self.ssh_bind!r}") from None
        if self.icount_spec() is not None and self.accel == "kvm":
            raise ValueError("--icount needs TCG: QEMU counts instructions only when it translates them, so it "
                             "cannot go with --accel kvm (use --accel tcg or auto)")


def parse_cpu_list(text: str, vcpus: int) -> list[int]:
    """Parse a kernel-style CPU list ("1", "1,3", "1-3") of guest vCPUs; vCPU 0 stays for housekeeping."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(f"--isolate-cpus: {text!r} is not a CPU list such as 1 or 1,3 or 1-3") from None
        if first > last:
            raise ValueError(f"--isolate-cpus: range {part.strip()!r} runs backwards")
        cpus.update(range(first, last + 1))
    bad = sorted(c for c in cpus if not 0 <= c < vcpus)
    if bad:
        raise ValueError(f"--isolate-cpus: vCPU {bad[0]} does not exist (the guests have --vcpus {vcpus})")
    if 0 in cpus:
        raise ValueError("--isolate-cpus: vCPU 0 must stay for the kernel's housekeeping and the applications")
    return sorted(cpus)


def guest_names(n: int, first: int = 1) -> list[tuple[str, str]]:
    """(guest name, device-model port name) pairs: iso-a on port a, iso-b on port b, ... from guest `first`."""
    return [(f"iso-{c}", c) for c in GUEST_LETTERS[first - 1:first - 1 + n]]
