"""The runner: a playbook's cases on the testbed's guests, each case on its pair of guests.

It knows the topology (which guests, how many vCPUs and queue pairs) and checks a playbook against it before
anything runs; the guest packages (guestcmd: isostack and isoperf, folders of this repository, never imported
here) are uploaded once per run, each skipped when unchanged. For stack iso the packages' C parts must be
built on the host before the upload (the guests have no gcc), and every iso test is checked against the
client guest's vCPUs and the testbed's queue pairs: a playbook asking for more is an error naming its line
and the `testbed up` flags. One case is case.CaseRunner's work. A test may name the native peer (`server: peer`,
`client: peer`): it has its own shell and layout and gets no upload (peer_role).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from testbed import state
from testbed.harness import guestcmd, hostcpu_sample, measure, peer_role, pinning, placement_cmd, upload
from testbed.harness.case import CaseRunner
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.measure import StatsReader
from testbed.harness.playbook import PEER, Case, Playbook
from testbed.harness.remote import Shell


class Runner:
    """Runs cases on a topology through Shells; knows nothing about SSH or the CLI."""

    def __init__(
        self,
        topology: state.Topology,
        shells: dict[str, Shell],
        layout: GuestLayout,
        stats_reader: StatsReader | None,
        console: Console,
        guest_root: Path = guestcmd.GUEST_ROOT,
    ):
        self.topology = topology
        self.shells = shells
        self.layout = layout
        self.console = console
        self.guest_root = guest_root  # the folder holding the guest packages (guestcmd.GUEST_PACKAGES)
        layouts = {}
        if topology.peer is not None:  # the native peer: its own shell (unless given) and layout (peer_role)
            shells.setdefault(PEER, peer_role.shell(topology.peer))
            layouts[PEER] = peer_role.layout(topology, guest_root)
        self.cases = CaseRunner(shells, layout, measure.DeviceModelCounters(stats_reader, console), console,
                                hostcpu=hostcpu_sample.HostCpuSampler.for_topology(topology), layouts=layouts,
                                peer=topology.peer, hosts=self.hosts())

    def hosts(self) -> dict[str, str]:
        """The guests on another host (a merged topology) and that host, by their libvirt URIs."""
        return {g.name: host for g in self.topology.guests if (host := self.topology.guest_host(g))}

    def pair(self, case: Case) -> tuple[state.GuestInfo, state.GuestInfo]:
        """(client, server) guests of a case: named in the playbook or the topology's first two; opposite the
        peer, the first guest."""
        guests = self.topology.guests
        with_peer = PEER in (case.spec.client, case.spec.server)
        if len(guests) < (1 if with_peer else 2) and not (case.spec.client and case.spec.server):
            raise HarnessError(f"the testbed has {len(guests)} guest(s); a test needs two")
        try:
            client = self.node(case.spec.client) if case.spec.client else guests[0]
            server = self.node(case.spec.server) if case.spec.server else guests[0 if with_peer else 1]
        except KeyError as e:
            raise HarnessError(f"test {case.spec.name!r}: {e.args[0]}") from None
        if client.name == server.name:
            raise HarnessError(f"test {case.spec.name!r}: client and server are both {client.name!r}")
        return client, server

    def node(self, name: str) -> state.GuestInfo:
        """A guest by name, or the native peer (as a GuestInfo: peer_role.node); KeyError says what is missing."""
        if name != PEER:
            return self.topology.guest(name)
        if self.topology.peer is None:
            raise KeyError("the testbed has no native peer (bring it up with `testbed up --peer`)")
        return peer_role.node(self.topology.peer)

    def queue_pairs(self) -> int:
        """The data NIC's queue pairs per guest, as `testbed up --queues` set them (1 if not recorded)."""
        try:
            return int((self.topology.options or {}).get("queues", 1))
        except (TypeError, ValueError):
            return 1

    def check_playbook(self, playbook: Playbook) -> None:
        """Every iso test fits its client guest: N instances need N + 1 vCPUs and N queue pairs; placement
        `apart` needs 2 vCPUs in each guest of the test; else a HarnessError naming the playbook line and the
        `testbed up` flags that would make it fit."""
        queues = self.queue_pairs()
        for i, spec in enumerate(playbook.tests):
            self._check_apart(playbook, i, [c for c in playbook.cases() if c.spec is spec])
            cases = [c for c in playbook.cases() if c.spec is spec and c.stack == "iso"]
            if not cases:
                continue
            client, _server = self.pair(cases[0])
            n = max(spec.instances)
            try:
                placement_cmd.plan(n, client.vcpus, queues)
            except ValueError as e:
                flags = placement_cmd.testbed_flags(n, client.vcpus, queues)
                raise HarnessError(
                    f"{playbook.path}:{spec.instances_line}: tests[{i}] ({spec.name}): instances {n} on {client.name}:"
                    f" {e}; bring the testbed up with `testbed up {flags}` (this replaces the running one; keep"
                    f" its other options)"
                ) from None

    def _check_apart(self, playbook: Playbook, i: int, cases: list[Case]) -> None:
        spec = cases[0].spec
        if pinning.APART not in spec.placements:
            return
        small = [g for g in self.pair(cases[0]) if not peer_role.is_peer(g) and g.vcpus < pinning.APART_MIN_VCPUS]
        if small:
            raise HarnessError(
                f"{playbook.path}:{spec.placement_line}: tests[{i}] ({spec.name}): placement 'apart' puts the"
                f" application and the NIC's interrupts on two vCPUs; {small[0].name} has {small[0].vcpus}: bring"
                f" the testbed up with `testbed up --vcpus {pinning.APART_MIN_VCPUS}` or use placement 'irq'")

    def check_native(self) -> None:
        """The guest packages' C parts must be built in the folders that are uploaded (upload.check_native_parts)."""
        try:
            built = upload.check_native_parts(self.guest_root)
        except upload.NativePartsMissing as e:
            raise HarnessError(str(e)) from None
        self.console.log(f"guest native parts built: {', '.join(built)}")

    def prepare(self, guest_names: list[str]) -> dict:
        """Upload the guest packages where needed; returns per-guest metadata (upload.sync_guest)."""
        packages = upload.snapshots(self.guest_root)
        out = {}
        for name in guest_names:
            if name == PEER and self.topology.peer is not None:  # native: runs the code where it is
                peer_role.log_dir(self.topology).mkdir(parents=True, exist_ok=True)
                out[name] = peer_role.prepare_record(self.topology.peer, self.guest_root)
            else:
                out[name] = upload.sync_guest(self.shells[name], packages, self.layout, self.console.log)
        return out

    def run_case(self, case: Case) -> dict:
        """The case's record (case.CaseRunner); an unknown guest in the playbook is a HarnessError."""
        client, server = self.pair(case)
        return self.cases.run(case, client, server, self.queue_pairs())
