"""The runner end to end with two local "guests" (LocalShell on this host, loopback data path), no VMs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from rich.console import Console

from testbed import state
from testbed.harness import dmstats, remote, results, tcpstats
from testbed.harness.guestcmd import GUEST_ROOT, GuestLayout
from testbed.harness.playbook import parse_playbook
from testbed.harness.runner import HarnessError, Runner, execute

FIXTURES = Path(__file__).parent / "fixtures" / "harness"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_topology() -> state.Topology:
    topo = state.Topology.load(FIXTURES / "topology.json")
    for g in topo.guests:
        g.data_ip = "127.0.0.1"
    return topo


class FakeStats:
    """Canned `vhea stats` snapshots, handed out in order (before, after, before, after, ...)."""

    def __init__(self, snapshots: list[dict]):
        self.snapshots = list(snapshots)
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.snapshots.pop(0)


def _counters(a_bytes: int, b_bytes: int) -> dict:
    def port(n: int) -> dict:
        return {
            "from_guest_frames": n // 1000,
            "from_guest_bytes": n,
            "to_guest_frames": 0,
            "to_guest_bytes": 0,
            "drops": {},
        }

    return {"a": port(a_bytes), "b": port(b_bytes)}


def _runner(tmp_path: Path, stats) -> Runner:
    layout = GuestLayout(remote_root=str(tmp_path / "opt"), python=sys.executable, log_dir=str(tmp_path))
    (tmp_path / "opt").mkdir()
    shells = {"iso-a": remote.LocalShell("iso-a"), "iso-b": remote.LocalShell("iso-b")}
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    # A snapshot of the guest code: the real tree may change while the test runs (others work on it), and the
    # runner needs only isoperf's Python modules for these tests.  Without placement.py the runner's legacy
    # placement fails here (logged) instead of moving this host's NIC IRQs.
    root = tmp_path / "src"
    (root / "isostack").mkdir(parents=True)
    shutil.copyfile(GUEST_ROOT / "isostack" / "__init__.py", root / "isostack" / "__init__.py")
    python_only = shutil.ignore_patterns("__pycache__", "*.so", "*.c")
    shutil.copytree(GUEST_ROOT / "isoperf", root / "isoperf", ignore=python_only)
    assert not (root / "isostack" / "placement.py").exists()
    return Runner(_local_topology(), shells, layout, stats, console, guest_root=root)


def _playbook(port: int, extra: str = "") -> str:
    return f"""
version: 1
name: local
tests:
  - name: stream-local
    test: stream
    size: [256, 1448]
    duration: 0.3
    warmup: 0.1
    verify: true
    port: {port}
{extra}"""


def test_runner_runs_every_case_and_stores_results(tmp_path):
    huge = 10**12  # the fake device model "saw" more bytes than isoperf could send in 0.3 s
    stats = FakeStats([_counters(0, 0), _counters(huge, 1000), _counters(huge, 1000), _counters(2 * huge, 2000)])
    runner = _runner(tmp_path, stats)
    playbook = parse_playbook(_playbook(_free_port()), "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)

    assert bad == 0
    run = results.load_run(run_json)
    assert [c["size"] for c in run["cases"]] == [256, 1448]
    for case in run["cases"]:
        assert case["status"] == "ok", case["error"]
        assert case["client"] == "iso-a" and case["server"] == "iso-b"
        r = case["isoperf"]
        assert r["verified"] is True
        assert r["server_total_bytes"] == r["client_total_bytes"] > 0
        assert case["device_model"]["crossed"] is True
        assert case["device_model"]["delta"]["a"]["from_guest_bytes"] == huge
        assert "--verify" in case["commands"]["client"]
        assert any("session from 127.0.0.1" in line for line in case["server_log"])
    assert stats.calls == 4
    assert run["playbook"]["text"] == playbook.text
    assert run["metadata"]["accel"] == "tcg"
    packages = [remote.PackageSnapshot.read(runner.guest_root / name) for name in ("isostack", "isoperf")]
    assert run["metadata"]["guests"]["iso-a"]["package_sha256"] == remote.snapshots_hash(packages)
    assert run["ended_at"] is not None
    with open(run_json.parent / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["size"]) for r in rows] == [256, 1448]
    assert rows[0]["crossed_device_model"] == "True"
    assert "| stream-local | legacy | 256 |" in (run_json.parent / "report.md").read_text()
    # both packages landed where the guests' PYTHONPATH points
    uploaded = tmp_path / "opt"
    for rel in ("isoperf/client.py", "isoperf/__main__.py"):
        assert (uploaded / rel).read_bytes() == (runner.guest_root / rel).read_bytes()
    assert (uploaded / "isostack" / "__init__.py").exists()


def test_runner_runs_rr_with_a_sockperf_crosscheck_and_maerts(tmp_path):
    """rr (legacy, cross-checked by a real sockperf on loopback) and maerts through the runner: the record
    holds isoperf's transactions and percentiles next to sockperf's, and the report shows both."""
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed (testbed/install-deps.sh installs it)")
    from test_harness_crosscheck import _free_port_pair  # sockperf binds port + 2 without SO_REUSEADDR

    runner = _runner(tmp_path, None)
    port = _free_port_pair()
    text = f"""
version: 1
name: local-rr
tests:
  - name: rr-local
    test: rr
    size: 64
    response_size: 128
    duration: 1
    warmup: 0.2
    intervals: 2
    verify: true
    crosscheck: true
    port: {port}
  - name: maerts-local
    test: maerts
    size: 1000
    duration: 0.3
    warmup: 0.1
    verify: true
    port: {port}
"""
    playbook = parse_playbook(text, "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    rr, maerts = results.load_run(run_json)["cases"]
    assert rr["status"] == "ok", rr["error"]
    perf = rr["isoperf"]
    assert perf["test"] == "rr" and perf["verified"] is True and perf["response_size"] == 128
    assert perf["transactions"] > 0 and len(perf["intervals"]) == 2
    assert 0 < perf["latency_us"]["p50"] <= perf["latency_us"]["p99"] <= perf["latency_us"]["max"]
    assert "--response-size 128 --repeats 2" in rr["commands"]["client"]
    cc = rr["crosscheck"]
    assert cc["tool"] == "sockperf" and cc["error"] is None, (cc, rr["commands"])
    assert cc["transactions_per_s"] > 0 and 0 < cc["latency_us"]["p50"] <= cc["latency_us"]["p99"]
    assert f"-p {port + 2} -t 2 -m 64 --full-rtt" in rr["commands"]["sockperf"]
    assert maerts["status"] == "ok", maerts["error"]
    assert maerts["isoperf"]["test"] == "maerts" and maerts["isoperf"]["verified"] is True
    assert maerts["crosscheck"] is None
    md = (run_json.parent / "report.md").read_text()
    assert "| rr-local | legacy | 64/128 | 1 |" in md and "| ↳ sockperf | legacy | 64/128 | 1 |" in md


def test_runner_flags_data_the_device_model_did_not_carry(tmp_path):
    # counters unchanged: the bytes went over loopback, not through the switch
    stats = FakeStats([_counters(5, 5), _counters(5, 5)])
    runner = _runner(tmp_path, stats)
    playbook = parse_playbook(_playbook(_free_port()).replace("[256, 1448]", "1448"), "local.yaml")
    run_json, bad = execute(runner, playbook, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    case = results.load_run(run_json)["cases"][0]
    assert case["status"] == "ok"
    assert case["device_model"]["crossed"] is False
    assert bad == 1


def test_runner_reports_a_server_that_cannot_listen(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        runner = _runner(tmp_path, None)
        playbook = parse_playbook(_playbook(busy.getsockname()[1]), "local.yaml")
        case = runner.run_case(playbook.cases()[0])
    finally:
        busy.close()
    assert case["status"] == "failed"
    assert "isoperf server exited" in case["error"]
    assert "cannot listen" in case["error"]


def test_runner_records_missing_device_model_counters(tmp_path):
    runner = _runner(tmp_path, None)
    playbook = parse_playbook(_playbook(_free_port()).replace("[256, 1448]", "512"), "local.yaml")
    case = runner.run_case(playbook.cases()[0])
    assert case["status"] == "ok", case["error"]
    assert case["device_model"]["crossed"] is None
    assert case["device_model"]["error"] == "counters unavailable: no device-model counters reader"


def test_runner_records_why_the_counters_are_unavailable(tmp_path):
    def broken() -> dict:
        raise dmstats.StatsError("vhea stats exited 1: ImportError")

    runner = _runner(tmp_path, broken)
    playbook = parse_playbook(_playbook(_free_port()).replace("[256, 1448]", "512"), "local.yaml")
    case = runner.run_case(playbook.cases()[0])
    assert case["status"] == "ok", case["error"]
    assert case["device_model"]["crossed"] is None
    assert case["device_model"]["error"] == "counters unavailable: vhea stats exited 1: ImportError"
    assert "device-model counters unavailable" in (tmp_path / "console.txt").read_text()


def test_unknown_guest_in_playbook_is_a_harness_error(tmp_path):
    runner = _runner(tmp_path, None)
    playbook = parse_playbook(_playbook(5701, "    client: iso-z\n"), "local.yaml")
    with pytest.raises(HarnessError, match="no guest named 'iso-z'"):
        runner.pair(playbook.cases()[0])


def test_sync_package_skips_an_unchanged_tree(tmp_path):
    pkg = tmp_path / "src" / "isostack"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "isoperf.py").write_text("print('v1')\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    root = tmp_path / "opt"
    root.mkdir()
    shell = remote.LocalShell("g")
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert sorted(p.name for p in (root / "isostack").iterdir()) == [".upload-sha256", "__init__.py", "isoperf.py"]
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is False
    (pkg / "isoperf.py").write_text("print('v2')\n")
    assert remote.sync_package(shell, remote.PackageSnapshot.read(pkg), str(root), sys.executable) is True
    assert (root / "isostack" / "isoperf.py").read_text() == "print('v2')\n"
    assert not (root / "isostack.upload").exists()


def test_snapshot_tarball_holds_exactly_the_hashed_files(tmp_path):
    import io
    import tarfile

    pkg = tmp_path / "isostack"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A")
    (pkg / "sub" / "b.so").write_bytes(b"\x7fELF")
    (pkg / "sub" / "b.so").chmod(0o755)
    snap = remote.PackageSnapshot.read(pkg)
    (pkg / "a.py").write_text("changed after the snapshot")
    with tarfile.open(fileobj=io.BytesIO(snap.tarball())) as tar:
        members = {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}
    assert members == {"isostack/a.py": (b"A", 0o644), "isostack/sub/b.so": (b"\x7fELF", 0o755)}
    assert snap.sha256 != remote.package_hash(pkg)


def test_package_hash_depends_on_names_and_content(tmp_path):
    pkg = tmp_path / "isostack"
    pkg.mkdir()
    (pkg / "a.py").write_text("1")
    h1 = remote.package_hash(pkg)
    (pkg / "a.py").rename(pkg / "b.py")
    h2 = remote.package_hash(pkg)
    (pkg / "b.py").write_text("2")
    assert len({h1, h2, remote.package_hash(pkg)}) == 3


def test_run_json_is_valid_json_after_each_case(tmp_path):
    store = results.RunStore(results.new_run_dir(tmp_path, results.utc_now()), {"started_at": "t"})
    store.add_case({"test_name": "x", "status": "failed", "error": "boom"})
    run = json.loads(store.run_json.read_text())
    assert run["cases"][0]["error"] == "boom"
    assert run.get("ended_at") is None


def test_fabric_shell_unreachable_guest_is_a_remote_error_naming_it(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a key\n")
    shell = remote.FabricShell("iso-a", "127.0.0.1", _free_port(), "root", str(key), connect_timeout_s=3)
    try:
        with pytest.raises(remote.RemoteError, match=r"^iso-a: 'true' failed: "):
            shell.run("true")
    finally:
        shell.close()


class ScriptedShell:
    """A guest that answers the runner's commands from a script and records them (stack iso, no VMs)."""

    def __init__(self, name: str, result: dict, daemon_dies: bool = False):
        self.name = name
        self.result = result
        self.daemon_dies = daemon_dies
        self.commands: list[str] = []

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        self.commands.append(command)
        if "-m isoperf server" in command:
            return remote.CommandResult(0, "100\n", "")
        if "isostack.dispatcher" in command:
            return remote.CommandResult(0, "200\n", "")
        if command.startswith("test -S"):
            return remote.CommandResult(3 if self.daemon_dies else 0, "", "")
        if "-m isoperf client" in command:
            return remote.CommandResult(0, json.dumps(self.result), "")
        if command.startswith("tail") and "isostackd" in command:
            return remote.CommandResult(0, "isostackd: CPU 1\nisostackd: stopped\n", "")
        return remote.CommandResult(0, "", "")

    def put(self, local: Path, remote_path: str) -> None:
        raise AssertionError("no upload in this test")

    def close(self) -> None:
        pass


ISO_RESULT = {
    "test": "stream", "stack": "iso", "size": 64, "connections": 1, "duration": 1.0, "bytes": 6400,
    "messages": 100, "throughput_bps": 51200.0, "messages_per_s": 100.0, "cpu": {"client": {}, "server": {}},
    "verified": True, "errors": [],
}


def _iso_runner(tmp_path: Path, daemon_dies: bool = False) -> tuple[Runner, ScriptedShell]:
    client = ScriptedShell("iso-a", ISO_RESULT, daemon_dies)
    shells = {"iso-a": client, "iso-b": ScriptedShell("iso-b", ISO_RESULT)}
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    return Runner(_local_topology(), shells, GuestLayout(), None, console), client


ISO_PB = """
version: 1
name: iso
tests:
  - name: stream-iso
    test: stream
    size: 64
    stack: iso
    duration: 1
    verify: true
"""


class TcpCountingShell(ScriptedShell):
    """Answers the TCP counters command: `sent` more segments and `retrans` retransmitted at each read."""

    def __init__(self, name: str, result: dict, readable: bool = True):
        super().__init__(name, result)
        self.readable = readable
        self.reads = 0

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if command == tcpstats.COMMAND:
            self.commands.append(command)
            self.reads += 1
            if not self.readable:
                return remote.CommandResult(1, "", "cat: /proc/net/netstat: No such file or directory")
            n = self.reads
            text = (f"Tcp: OutSegs RetransSegs\nTcp: {4000 * n} {40 * n}\n"
                    f"TcpExt: TCPTimeouts TCPSpuriousRTOs TCPFastRetrans\nTcpExt: {n} 0 {30 * n}\n")
            return remote.CommandResult(0, text, "")
        return super().run(command, timeout_s)


def test_case_records_both_guests_tcp_counters_around_the_client(tmp_path):
    client = TcpCountingShell("iso-a", ISO_RESULT)
    server = TcpCountingShell("iso-b", ISO_RESULT, readable=False)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    runner = Runner(_local_topology(), {"iso-a": client, "iso-b": server}, GuestLayout(), None, console)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert record["tcp"]["client"] == {"out_segs": 4000, "retrans_segs": 40, "rto_timeouts": 1, "spurious_rtos": 0,
                                       "fast_retrans": 30, "retrans_pct": 1.0}
    assert record["tcp"]["server"] == {"error": f"{tcpstats.COMMAND} exited 1"}  # recorded, not fatal
    i = client.commands.index(tcpstats.COMMAND)
    assert "-m isoperf client" in client.commands[i + 1] and client.commands[i + 2] == tcpstats.COMMAND


def test_stack_iso_case_runs_isostackd_around_the_pinned_client(tmp_path):
    runner, client = _iso_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    kinds = []
    for c in client.commands:
        if "isostack.dispatcher" in c:
            kinds.append("start")
        elif c.startswith("test -S"):
            kinds.append("ready")
        elif "-m isoperf client" in c:
            kinds.append("client")
        elif c.startswith("kill 200"):
            kinds.append("stop")
    assert kinds == ["start", "ready", "client", "stop"]
    assert "--cpu 1 " in record["commands"]["isostackd"]  # the last of iso-a's 2 vCPUs
    assert record["commands"]["client"].startswith("taskset -c 0 ")
    assert record["isostackd_log"] == ["isostackd: CPU 1", "isostackd: stopped"]


def test_stack_iso_case_fails_clearly_when_isostackd_dies(tmp_path):
    runner, client = _iso_runner(tmp_path, daemon_dies=True)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "failed"
    assert record["error"].startswith("iso-a: isostackd exited: isostackd: CPU 1")
    assert not any("-m isoperf client" in c for c in client.commands)


def test_execute_checks_the_native_parts_before_uploading_for_stack_iso(tmp_path, monkeypatch):
    runner, _client = _iso_runner(tmp_path)
    calls = []
    monkeypatch.setattr(runner, "check_native", lambda: calls.append("check native"))
    monkeypatch.setattr(runner, "prepare", lambda guests: calls.append("prepare") or {})
    execute(runner, parse_playbook(ISO_PB), tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    assert calls == ["check native", "prepare"]


def _guest_copy(tmp_path, with_built_parts: bool):
    """The guest packages' folders as the harness uploads them (copytree keeps the files' times)."""
    root = tmp_path / "src"
    skip = ("__pycache__",) if with_built_parts else ("__pycache__", "*.so")
    for name in ("isostack", "isoperf"):
        shutil.copytree(GUEST_ROOT / name, root / name, ignore=shutil.ignore_patterns(*skip))
    runner = Runner(_local_topology(), {}, GuestLayout(), None, Console(file=open(tmp_path / "c.txt", "w")),
                    guest_root=root)
    return root, runner


def test_check_native_finds_the_so_files_built_into_the_uploaded_packages(tmp_path):
    root, runner = _guest_copy(tmp_path, with_built_parts=True)
    runner.check_native()  # installing the project built them (setup.py); nothing is compiled here
    assert (root / "isostack" / "_atomics.so").exists()
    assert list((root / "isostack").glob("_fastpath*.so"))
    assert list((root / "isoperf").glob("_sendloop*.so"))


def test_check_native_refuses_packages_without_their_built_parts_naming_the_command(tmp_path):
    _root, runner = _guest_copy(tmp_path, with_built_parts=False)
    with pytest.raises(HarnessError, match=r"isostack: _atomics is not built; isostack: _fastpath is not built; "
                                           r"isoperf: _sendloop is not built.*`make native`"):
        runner.check_native()


def test_check_native_refuses_a_part_older_than_its_source(tmp_path):
    root, runner = _guest_copy(tmp_path, with_built_parts=True)
    built = next((root / "isostack").glob("_fastpath*.so"))
    os.utime(built, (1, 1))
    with pytest.raises(HarnessError, match=rf"isostack: {built.name} is older than _fastpath.c; build them with "
                                           r"`make native`"):
        runner.check_native()


def test_stack_iso_with_locks_starts_isostackd_with_uncontended_locks(tmp_path):
    runner, client = _iso_runner(tmp_path)
    case = parse_playbook(ISO_PB + "    locks: [true]\n").cases()[0]
    assert case.locks and case.label.startswith("stream-iso iso+locks ")
    record = runner.run_case(case)
    assert record["status"] == "ok", record["error"]
    assert record["locks"] is True
    assert record["commands"]["isostackd"].endswith(
        "--socket /run/isostack/isostackd.sock --uncontended-locks > /tmp/isostackd.log 2>&1 < /dev/null & echo $!"
    )


def test_payload_is_checked_on_the_sending_guests_port():
    from testbed.harness.runner import _payload_by_sender

    assert _payload_by_sender({"test": "stream", "server_total_bytes": 1000}, "a", "b") == {"a": 1000}
    assert _payload_by_sender({"test": "maerts", "server_total_bytes": 1000}, "a", "b") == {"b": 1000}
    rr = {"test": "rr", "size": 64, "response_size": 256, "server_total_bytes": 10 * 320}
    assert _payload_by_sender(rr, "a", "b") == {"a": 640, "b": 2560}
    assert _payload_by_sender({**rr, "test": "crr", "response_size": None, "server_total_bytes": 128}, "a", "b") == {
        "a": 64, "b": 64}


# ------------------------------------------------------------ instances and placement (scripted guests)

SNAPSHOT = """\
irq virtio0-input.0 29 {a} 5,0,0
irq virtio0-output.0 30 {a} 5,0,0
irq virtio0-input.1 31 {b} 0,0,0
irq virtio0-output.1 32 {b} 0,0,0
rps rx-0 0
rps rx-1 0
xps tx-0 1
xps tx-1 2
"""


class InstancesShell(ScriptedShell):
    """A 3-vCPU guest with 2 queue pairs: isostackd instances get PIDs 200 + K and write their stats line;
    the layout snapshot counts interrupts on the vCPU a queue is placed on."""

    def __init__(self, name: str, result: dict, dying_instance: int | None = None):
        super().__init__(name, result)
        self.dying_instance = dying_instance
        self.snapshots = 0

    def run(self, command: str, timeout_s: float = 60.0) -> remote.CommandResult:
        if "isostack.dispatcher" in command:
            self.commands.append(command)
            k = int(command.split("--instance ")[1].split()[0]) if "--instance " in command else 0
            return remote.CommandResult(0, f"{200 + k}\n", "")
        if command.startswith("test -S"):
            self.commands.append(command)
            k = int(command.split("isostackd-")[1].split(".")[0]) if "isostackd-" in command else 0
            return remote.CommandResult(3 if k == self.dying_instance else 0, "", "")
        if "isostack.placement --legacy" in command:
            self.commands.append(command)
            return remote.CommandResult(0, "/proc/irq/29/smp_affinity_list = 0\n", "")
        if "/proc/interrupts" in command:
            self.commands.append("snapshot")
            self.snapshots += 1
            text = SNAPSHOT.format(a=1, b=2)
            if self.snapshots % 2 == 0:  # after the client: 100 interrupts more on each queue's vCPU
                text = text.replace("29 1 5,0,0", "29 1 5,100,0").replace("31 2 0,0,0", "31 2 0,0,100")
            return remote.CommandResult(0, text, "")
        if command.startswith("tail") and "isostackd" in command:
            self.commands.append(command)
            k = int(command.split("isostackd-")[1].split(".")[0]) if "isostackd-" in command else 0
            log = (f"t isostackd INFO pinned to CPU {1 + k}\n"
                   f"t isostackd INFO placement: /proc/irq/{29 + 2 * k}/smp_affinity_list = {1 + k}\n"
                   f"t isostackd INFO stats: {{'loops': {1000 + k}, 'sends': {10 + k}}}\n")
            return remote.CommandResult(0, log, "")
        return super().run(command, timeout_s)


def _instances_runner(tmp_path: Path, vcpus: int = 3, queues: int = 2, dying_instance: int | None = None):
    topo = _local_topology()
    for g in topo.guests:
        g.vcpus = vcpus
    topo.options = {"queues": queues, "vcpus": vcpus}
    client = InstancesShell("iso-a", ISO_RESULT, dying_instance)
    server = InstancesShell("iso-b", ISO_RESULT)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    return Runner(topo, {"iso-a": client, "iso-b": server}, GuestLayout(), None, console), client, server


def _kinds(commands: list[str]) -> list[str]:
    out = []
    for c in commands:
        if "isostack.dispatcher" in c:
            out.append("start " + (c.split("--instance ")[1].split()[0] if "--instance " in c else "0"))
        elif c.startswith("test -S"):
            out.append("ready")
        elif "isostack.placement --legacy" in c:
            out.append("legacy placement")
        elif c == "snapshot":
            out.append(c)
        elif "-m isoperf client" in c:
            out.append("client")
        elif c.startswith("kill 20"):
            out.append("stop " + c.split()[1])
        elif c.startswith("rm -f /run/isostack/isostackd-"):
            out.append("cleanup")
    return out


def test_two_instances_each_on_its_vcpu_with_its_queue_pair(tmp_path):
    runner, client, server = _instances_runner(tmp_path)
    case = parse_playbook(ISO_PB + "    instances: [2]\n    so_busy_poll_us: 0\n").cases()[0]
    assert case.instances == 2 and case.stack_label == "iso×2"
    record = runner.run_case(case)
    assert record["status"] == "ok", record["error"]
    assert _kinds(client.commands) == [
        "cleanup", "start 0", "start 1", "ready", "ready", "snapshot", "client", "snapshot", "stop 201", "stop 200"]
    assert _kinds(server.commands) == ["legacy placement", "snapshot", "snapshot"]
    start0, start1 = record["commands"]["isostackd"], record["commands"]["isostackd-1"]
    assert " --cpu 1 " in start0 and " --queues 0 " in start0 and "--instance" not in start0
    assert " --cpu 2 " in start1 and " --instance 1 --queues 1 " in start1
    assert "--socket /run/isostack/isostackd-1.sock" in start1 and "> /tmp/isostackd-1.log" in start1
    assert all(" --so-busy-poll-us 0" in s for s in (start0, start1))
    assert record["commands"]["client"].startswith("taskset -c 0 env ISOSTACK_SOCKET=/run/isostack/isostackd.sock ")
    assert record["instances"] == 2 and record["so_busy_poll_us"] == 0
    inst0, inst1 = record["isostackd"]
    assert {k: inst1[k] for k in ("instance", "cpu", "queues", "socket", "pid")} == {
        "instance": 1, "cpu": 2, "queues": [1], "socket": "/run/isostack/isostackd-1.sock", "pid": 201}
    assert inst0["queues"] == [0] and inst0["pid"] == 200
    assert inst1["stats"] == {"loops": 1001, "sends": 11}
    assert inst1["placement"] == ["/proc/irq/31/smp_affinity_list = 2"]
    assert record["isostackd_log"] == inst0["log"] and inst0["log"][0] == "t isostackd INFO pinned to CPU 1"
    placement = record["placement"]
    assert placement["iso-a"]["mode"] == "isostack" and placement["iso-b"]["mode"] == "legacy"
    assert placement["iso-b"]["command"] == "PYTHONPATH=/opt python3 -m isostack.placement --legacy --interfaces eth0"
    assert placement["iso-b"]["output"] == ["/proc/irq/29/smp_affinity_list = 0"]
    assert placement["iso-a"]["layout"]["irqs"]["virtio0-input.1"]["affinity"] == "2"
    assert placement["iso-a"]["interrupts"]["virtio0-input.1"] == [0, 0, 100]


def test_one_instance_on_a_two_queue_testbed_owns_every_queue(tmp_path):
    runner, client, _server = _instances_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert " --cpu 2 " in record["commands"]["isostackd"] and "--queues" not in record["commands"]["isostackd"]
    assert "--so-busy-poll-us" not in record["commands"]["isostackd"]  # isostackd's default
    (inst,) = record["isostackd"]
    assert inst["queues"] == "all" and inst["stats"] == {"loops": 1000, "sends": 10}


def test_nap_max_and_epoll_busy_poll_reach_every_instance_and_the_record(tmp_path):
    runner, _client, _server = _instances_runner(tmp_path)
    text = ISO_PB + "    instances: [2]\n    nap_max_us: 0\n    epoll_busy_poll_us: 25\n"
    record = runner.run_case(parse_playbook(text).cases()[0])
    assert record["status"] == "ok", record["error"]
    for start in (record["commands"]["isostackd"], record["commands"]["isostackd-1"]):
        assert " --nap-max-us 0 --epoll-busy-poll-us 25" in start and "--so-busy-poll-us" not in start
    assert (record["nap_max_us"], record["epoll_busy_poll_us"], record["so_busy_poll_us"]) == (0, 25, None)
    # the legacy case of the same test records neither (isostackd does not run) and starts no isostackd
    runner, client, _server = _instances_runner(tmp_path)
    legacy_text = text.replace("    stack: iso\n", "    stack: [legacy, iso]\n")
    legacy = [c for c in parse_playbook(legacy_text).cases() if c.stack == "legacy"][0]
    record = runner.run_case(legacy)
    assert record["status"] == "ok", record["error"]
    assert record["nap_max_us"] is None and record["epoll_busy_poll_us"] is None
    assert not any("isostack.dispatcher" in c for c in client.commands)


def test_nap_max_and_epoll_busy_poll_not_set_leave_isostackd_defaults(tmp_path):
    runner, _client, _server = _instances_runner(tmp_path)
    record = runner.run_case(parse_playbook(ISO_PB).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert "--nap-max-us" not in record["commands"]["isostackd"]
    assert "--epoll-busy-poll-us" not in record["commands"]["isostackd"]
    assert record["nap_max_us"] is None and record["epoll_busy_poll_us"] is None


def test_legacy_case_places_both_guests_the_legacy_way_before_the_client(tmp_path):
    runner, client, server = _instances_runner(tmp_path)
    text = ISO_PB.replace("    stack: iso\n", "    stack: legacy\n")
    record = runner.run_case(parse_playbook(text).cases()[0])
    assert record["status"] == "ok", record["error"]
    assert _kinds(client.commands) == ["legacy placement", "snapshot", "client", "snapshot"]
    assert _kinds(server.commands) == ["legacy placement", "snapshot", "snapshot"]
    assert {g: p["mode"] for g, p in record["placement"].items()} == {"iso-a": "legacy", "iso-b": "legacy"}
    assert "isostackd" not in record and record["instances"] == 1 and record["so_busy_poll_us"] is None
    assert record["placement"]["iso-a"]["interrupts"]["virtio0-input.0"] == [0, 100, 0]


def test_an_instance_that_dies_stops_the_others_and_fails_the_case(tmp_path):
    runner, client, _server = _instances_runner(tmp_path, dying_instance=1)
    record = runner.run_case(parse_playbook(ISO_PB + "    instances: 2\n").cases()[0])
    assert record["status"] == "failed"
    assert record["error"].startswith("iso-a: isostackd instance 1 exited: t isostackd INFO pinned to CPU 2")
    assert "client" not in _kinds(client.commands)
    assert _kinds(client.commands)[-2:] == ["stop 201", "stop 200"]
    assert [i["instance"] for i in record["isostackd"]] == [0, 1]  # their logs are still recorded


@pytest.mark.parametrize("vcpus, queues", [(2, 2), (3, 1), (2, 1)])
def test_a_testbed_too_small_for_the_instances_is_refused_before_the_run(tmp_path, vcpus, queues):
    runner, client, _server = _instances_runner(tmp_path, vcpus=vcpus, queues=queues)
    pb = parse_playbook(ISO_PB + "    instances: [1, 2]\n", "pb.yaml")
    with pytest.raises(HarnessError) as exc:
        execute(runner, pb, tmp_path / "results", ["iso-a", "iso-b"], runner.console)
    msg = str(exc.value)
    assert msg.startswith("pb.yaml:11: tests[0] (stream-iso): instances 2 on iso-a: 2 isostackd instance(s) need"
                          " 3 vCPUs (vCPU 0 for the client, one per instance) and 2 NIC queue pair(s)")
    assert f"the guest has {vcpus} vCPU(s) and {queues} queue pair(s)" in msg
    assert "bring the testbed up with `testbed up --vcpus 3 --queues 2`" in msg
    assert client.commands == []  # nothing ran, nothing was built or uploaded
    assert not (tmp_path / "results").exists()


def test_the_shipped_instances_playbook_fits_the_testbed_its_header_names(tmp_path):
    from testbed.harness.playbook import load_playbook

    pb = load_playbook(Path(__file__).resolve().parents[1] / "playbooks" / "isostack-instances.yaml")
    runner, _c, _s = _instances_runner(tmp_path, vcpus=3, queues=2)
    runner.check_playbook(pb)
    runner, _c, _s = _instances_runner(tmp_path, vcpus=2, queues=1)
    with pytest.raises(HarnessError, match=r"isostack-instances\.yaml:20: .*`testbed up --vcpus 3 --queues 2`"):
        runner.check_playbook(pb)


def test_a_legacy_only_playbook_needs_no_particular_testbed(tmp_path):
    runner, _c, _s = _instances_runner(tmp_path, vcpus=1, queues=1)
    runner.check_playbook(parse_playbook(ISO_PB.replace("    stack: iso\n", "")))
