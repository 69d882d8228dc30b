"""The playbook's `program` and `frontend` axes: validation, the cases they make, the command lines (isoperf
under isostack-run, iperf3 and sockperf on kernel sockets or under it) and the parse of the tools' real output
into isoperf's keys; fixtures captured on this host with the shim (tests/fixtures/preload)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness_helpers import local_topology
from rich.console import Console

from testbed.harness import iso_traffic, isoperf_cmd, placement_cmd, program_cmd, remote
from testbed.harness.errors import HarnessError
from testbed.harness.guestcmd import GuestLayout
from testbed.harness.playbook import PlaybookError, parse_playbook
from testbed.harness.results import legacy_column, stack_column
from testbed.harness.runner import Runner

FIXTURES = Path(__file__).parent / "fixtures" / "preload"
LAYOUT = GuestLayout()

PB = """\
version: 1
name: p
tests:
  - name: t
    test: {test}
    size: 64
    stack: [legacy, iso]
    duration: 2.5
    warmup: 1.5
{extra}"""


def _cases(test: str = "stream", extra: str = "") -> list:
    return parse_playbook(PB.format(test=test, extra=extra)).cases()


def _one(label_start: str, test: str = "stream", extra: str = ""):
    (case,) = [c for c in _cases(test, extra) if c.stack_label == label_start]
    return case


def test_program_and_frontend_axes_make_each_valid_combination_once():
    cases = _cases(extra="    program: [isoperf, iperf3]\n    frontend: [python, preload]\n")
    assert [(c.program, c.stack, c.frontend, c.stack_label) for c in cases] == [
        ("isoperf", "legacy", "kernel", "legacy"),
        ("iperf3", "legacy", "kernel", "iperf3 legacy"),
        ("isoperf", "iso", "python", "iso"),
        ("isoperf", "iso", "preload", "iso(preload)"),
        ("iperf3", "iso", "preload", "iperf3 iso(preload)"),  # iperf3 has no Python front-end
    ]
    assert [c.iso_ends for c in cases] == [(), (), ("client",), ("client",), ("client",)]


def test_defaults_are_isoperf_through_the_python_front_end():
    legacy, iso = _cases()
    assert (legacy.program, legacy.frontend, iso.program, iso.frontend) == ("isoperf", "kernel", "isoperf", "python")
    assert iso.label == "t iso size=64 conns=1 #1"


@pytest.mark.parametrize("extra, message", [
    ("    program: iperf", "unknown program 'iperf' (choose from isoperf, iperf3, sockperf); did you mean 'iperf3'?"),
    ("    frontend: prelaod", "unknown frontend 'prelaod' (choose from python, preload); did you mean 'preload'?"),
    ("    frontent: preload", "unknown key 'frontent'"),
    ("    program: sockperf\n    frontend: preload", "program 'sockperf' runs test rr, not 'stream'"),
    ("    program: iperf3", "iperf3 reaches IsoStack only through the shim: give 'frontend: preload'"),
    ("    program: iperf3\n    frontend: preload\n    verify: true", "'verify' is an isoperf option"),
    ("    frontend: preload\n    instances: [1, 2]", "the preload shim attaches to one isostackd instance"),
    ("    program: [iperf3]\n    frontend: preload\n    server: peer", "the peer runs isoperf only"),
    ("    program: 3", "'program' must be a string or a list of them, got an integer"),
])
def test_bad_program_or_frontend_is_an_error_naming_the_line(extra, message):
    with pytest.raises(PlaybookError) as e:
        _cases(extra=extra + "\n")
    assert message in str(e.value) and "<playbook>:" in str(e.value)


def test_frontend_needs_an_isostack_end_and_sockperf_one_connection():
    with pytest.raises(PlaybookError, match="'frontend' is how an IsoStack end reaches isostackd"):
        parse_playbook(PB.format(test="stream", extra="").replace("[legacy, iso]", "legacy")
                       + "    frontend: preload\n")
    with pytest.raises(PlaybookError, match="sockperf ping-pong runs one connection"):
        _cases("rr", "    program: sockperf\n    frontend: preload\n    connections: 2\n")


def test_isoperf_under_the_shim_runs_its_kernel_socket_stack_through_isostack_run():
    case = _one("iso(preload)", extra="    frontend: preload\n")
    cmd = isoperf_cmd.client_command(LAYOUT, case, "10.10.0.2")
    assert cmd.startswith("PYTHONPATH=/opt python3 -m isostack.run --socket /run/isostack/isostackd.sock"
                          " python3 -m isoperf client --host 10.10.0.2 ")
    assert " --stack legacy " in cmd and "ISOSTACK_SOCKET=" not in cmd
    start = isoperf_cmd.server_start_command(LAYOUT, "10.10.0.2", 5701, stack="iso", frontend="preload")
    assert "nohup env PYTHONPATH=/opt python3 -m isostack.run --socket /run/isostack/isostackd.sock python3 -m" \
           " isoperf server --bind 10.10.0.2 --port 5701 --once" in start and "--stack iso" not in start
    python = _one("iso", extra="    frontend: [python, preload]\n")
    assert isoperf_cmd.client_command(LAYOUT, python, "10.10.0.2").startswith(
        "ISOSTACK_SOCKET=/run/isostack/isostackd.sock PYTHONPATH=/opt python3 -m isoperf client")


def test_iperf3_commands_on_kernel_sockets_and_under_the_shim():
    extra = "    program: iperf3\n    frontend: preload\n    server_stack: [legacy, iso]\n"
    cases = {c.stack_label: c for c in _cases(extra=extra)}
    legacy, client_iso = cases["iperf3 legacy"], cases["iperf3 iso(preload)"]
    both_iso = cases["iperf3 iso→iso(preload)"]
    assert program_cmd.client_command(LAYOUT, legacy, "10.10.0.2") == (
        "iperf3 -c 10.10.0.2 -p 5702 -t 3 -O 2 -P 1 -l 64 -J")
    assert program_cmd.client_command(LAYOUT, client_iso, "10.10.0.2") == (
        "PYTHONPATH=/opt python3 -m isostack.run --socket /run/isostack/isostackd.sock"
        " iperf3 -c 10.10.0.2 -p 5702 -t 3 -O 2 -P 1 -l 64 -J")
    assert program_cmd.server_start_command(LAYOUT, client_iso, "10.10.0.2") == (
        "rm -f /tmp/iperf3-server-5702.log; nohup env iperf3 -s -1 -B 10.10.0.2 -p 5702"
        " > /tmp/iperf3-server-5702.log 2>&1 < /dev/null & echo $!")
    assert "nohup env PYTHONPATH=/opt python3 -m isostack.run --socket /run/isostack/isostackd.sock iperf3 -s -1 " \
           in program_cmd.server_start_command(LAYOUT, both_iso, "10.10.0.2")
    assert both_iso.iso_ends == ("client", "server")
    assert program_cmd.server_ready_command(legacy, 77).startswith("ss -Hltn 'sport = :5702' | grep -q .")


def test_sockperf_commands():
    case = _one("sockperf iso(preload)", "rr", "    program: sockperf\n    frontend: preload\n")
    assert program_cmd.client_command(LAYOUT, case, "10.10.0.2") == (
        "PYTHONPATH=/opt python3 -m isostack.run --socket /run/isostack/isostackd.sock"
        " sockperf ping-pong --tcp -i 10.10.0.2 -p 5703 -t 3 -m 64 --full-rtt")
    assert "nohup env sockperf server --tcp -i 10.10.0.2 -p 5703 >" in \
        program_cmd.server_start_command(LAYOUT, case, "10.10.0.2")


def test_iperf3_output_under_the_shim_fills_isoperfs_keys():
    case = _one("iperf3 iso(preload)", extra="    program: iperf3\n    frontend: preload\n")
    text = (FIXTURES / "iperf3-preload-l64.json").read_text()
    r = program_cmd.parse_client_output(case, 0, text, "")
    assert set(isoperf_cmd.REQUIRED_KEYS) <= set(r)
    end = json.loads(text)["end"]
    assert r["bytes"] == end["sum_received"]["bytes"] == 93375552 and r["messages"] == 93375552 // 64
    assert r["sender_bytes"] == end["sum_sent"]["bytes"] == 93397268
    assert r["duration"] == 2.013 and r["messages_per_s"] == round(93375552 // 64 / 2.013, 1)
    assert r["throughput_bps"] == round(end["sum_received"]["bits_per_second"], 1)
    assert (r["program"], r["test"], r["stack"], r["verified"], r["errors"]) == ("iperf3", "stream", "iso", None, [])
    # the shim refuses TCP_INFO/TCP_CONGESTION: iperf3 adds an "error" per getsockopt to a complete result
    assert r["tool"]["warnings"] == [program_cmd.OPTION_WARNING] * 4 and r["tool"]["retransmits"] is None
    legacy = _one("iperf3 legacy", extra="    program: iperf3\n    frontend: preload\n")
    assert program_cmd.parse_client_output(legacy, 0, (FIXTURES / "iperf3-legacy-l64.json").read_text(),
                                           "")["messages_per_s"] > 0


def test_iperf3_error_and_garbage_are_clear_errors():
    case = _one("iperf3 legacy", extra="    program: iperf3\n    frontend: preload\n")
    with pytest.raises(program_cmd.ProgramOutputError, match="iperf3 client .exit 1.: iperf3: unable to connect"):
        program_cmd.parse_client_output(case, 1, (FIXTURES / "iperf3-refused.json").read_text(), "")
    with pytest.raises(program_cmd.ProgramOutputError, match="iperf3 printed no JSON: isostack-run: isostackd is"):
        program_cmd.parse_client_output(case, 69, "isostack-run: isostackd is not running: no attach socket", "")
    incomplete = json.dumps({"start": {}, "end": {}, "error": program_cmd.OPTION_WARNING})
    with pytest.raises(program_cmd.ProgramOutputError, match="iperf3: getsockopt - Protocol not available"):
        program_cmd.parse_client_output(case, 1, incomplete, "")
    with pytest.raises(program_cmd.ProgramOutputError, match=r"\(exit 69\): iperf3 printed no JSON: no output \(stderr:"
                       " isostack-run: isostackd is not running"):
        program_cmd.parse_client_output(case, 69, "", "isostack-run: isostackd is not running: no attach socket")


def test_sockperf_output_under_the_shim_fills_isoperfs_keys():
    case = _one("sockperf iso(preload)", "rr", "    program: sockperf\n    frontend: preload\n")
    r = program_cmd.parse_client_output(case, 0, (FIXTURES / "sockperf-preload-pp64.txt").read_text(), "")
    assert set(isoperf_cmd.REQUIRED_KEYS) <= set(r)
    assert r["transactions"] == r["messages"] == 33993 and r["duration"] == 1.529
    assert r["transactions_per_s"] == r["messages_per_s"] == round(33993 / 1.529, 1)
    assert r["bytes"] == 33993 * 2 * 64
    lat = r["latency_us"]
    assert (lat["p50"], lat["p99"], lat["p99.9"], lat["min"], lat["max"]) == (20.549, 247.915, 3033.589, 17.589,
                                                                              14459.443)
    assert lat["samples"] == 33993 and lat["mean"] == 44.955


def test_iso_traffic_from_a_real_isostackd_stats_line():
    stats = placement_cmd.parse_stats((FIXTURES / "isostackd-after-shim.log").read_text())
    got = iso_traffic.check("the iperf3 client", "iso-a", [{"stats": stats}], "iperf3", 93397268)
    assert got == {"send_bytes": 148007831, "recv_bytes": 142058681, "apps_attached": 4,
                   "program_bytes": 93397268, "carried": True}
    with pytest.raises(HarnessError, match="claims IsoStack but isostackd carried 290066512 bytes .* reported"):
        iso_traffic.check("the iperf3 client", "iso-a", [{"stats": stats}], "iperf3", 10**9)
    with pytest.raises(HarnessError, match="final counters are missing"):
        iso_traffic.check("the sockperf server", "iso-b", [{"stats": None}], "sockperf", 1)
    with pytest.raises(HarnessError, match="carried 0 bytes"):
        iso_traffic.check("x", "iso-a", [{"stats": {"send_bytes": 0, "recv_bytes": 0, "apps_attached": 1}}], "x", 0)


def test_report_columns_name_program_and_front_end_and_compare_with_the_same_programs_legacy():
    rec = {"stack": "iso", "program": "iperf3", "frontend": "preload", "server_stack": "legacy"}
    assert stack_column(rec) == "iperf3 iso(preload)" and legacy_column(rec) == "iperf3 legacy"
    assert stack_column({"stack": "iso"}) == "iso"  # a record from before the axes


class ToolShell:
    """A guest that runs iperf3 under isostack-run as the runner asks (scripted: real iperf3 output captured
    through the shim) and whose isostackd logs `carried` bytes."""

    def __init__(self, name: str, carried: int):
        self.name, self.carried, self.commands = name, carried, []

    def run(self, command: str, timeout_s: float = 60.0):
        self.commands.append(command)
        if "isostack.dispatcher" in command or "iperf3 -s" in command:
            return remote.CommandResult(0, "300\n", "")
        if "iperf3 -c" in command:
            return remote.CommandResult(0, (FIXTURES / "iperf3-preload-l64.json").read_text(), "")
        if command.startswith("tail") and "isostackd" in command:
            stats = f"{{'send_bytes': {self.carried}, 'recv_bytes': {self.carried}, 'apps_attached': 1}}"
            return remote.CommandResult(0, f"t isostackd INFO stats: {stats}\n", "")
        return remote.CommandResult(0, "", "")

    def put(self, local, remote_path):
        raise AssertionError("no upload in this test")

    def close(self):
        pass


def _tool_run(tmp_path, server_carried: int):
    client, server = ToolShell("iso-a", 10**8), ToolShell("iso-b", server_carried)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)
    runner = Runner(local_topology(), {"iso-a": client, "iso-b": server}, LAYOUT, None, console)
    extra = "    program: iperf3\n    frontend: preload\n    server_stack: iso\n"
    (case,) = [c for c in _cases(extra=extra) if c.stack == "iso"]
    return runner.run_case(case), client, server


def test_runner_runs_both_iperf3_ends_under_isostack_run_and_checks_both_isostackds(tmp_path):
    record, client, server = _tool_run(tmp_path, 10**8)
    assert record["status"] == "ok", record["error"]
    assert (record["program"], record["frontend"], record["control"]) == ("iperf3", "preload", None)
    assert record["commands"]["server"].startswith("rm -f /tmp/iperf3-server-5702.log; nohup env PYTHONPATH=/opt"
                                                   " python3 -m isostack.run --socket /run/isostack/isostackd.sock"
                                                   " iperf3 -s -1 -B 127.0.0.1 -p 5702 ")
    assert "python3 -m isostack.run --socket /run/isostack/isostackd.sock iperf3 -c 127.0.0.1 -p 5702" \
        in record["commands"]["client"]
    assert any(c.startswith("ss -Hltn 'sport = :5702'") for c in server.commands)
    assert record["isoperf"]["bytes"] == 93375552 and record["isoperf"]["program"] == "iperf3"
    traffic = record["isostack_traffic"]
    assert traffic["frontend"] == "preload" and traffic["client"]["carried"] and traffic["server"]["carried"]


def test_runner_fails_a_case_whose_server_isostackd_saw_nothing(tmp_path):
    record, _client, _server = _tool_run(tmp_path, 0)
    assert record["status"] == "failed" and record["isostack_traffic"] is None
    assert record["error"].startswith("the iperf3 server on iso-b claims IsoStack but isostackd carried 0 bytes")
