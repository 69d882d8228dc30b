"""The report table of a stored run, rendered to text."""

from __future__ import annotations

import copy
import io
from pathlib import Path

from rich.console import Console

from testbed.harness import report, results

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "harness" / "runs" / "20261126T100000Z"


def _render(run: dict) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(report.build_table(run))
    return out.getvalue()


def _row(text: str, startswith: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.strip("│┃ ").startswith(startswith))
    return [cell.strip() for cell in line.replace("┃", "│").strip("│").split("│")]


def test_table_shows_throughput_cpu_and_device_model_frames():
    text = _render(results.load_run(FIXTURE_RUN / "run.json"))
    assert "fixture - run 20261126T100000Z (tcg)" in text
    header = _row(text, "test")
    assert header[:4] == ["test", "stack", "size", "conns"]
    assert "DM frames a→b" in header and "DM frames b→a" in header
    ok = _row(text, "stream")
    assert ok == [
        "stream",
        "legacy",
        "1448",
        "1",
        "0.988",
        "85,251",
        "-",
        "-",
        "-",
        "61.5",
        "55.2",
        "1,022,000",
        "511,000",
        "",
        "yes",
        "ok",
    ]


def test_failed_case_shows_no_numbers_and_its_error_below_the_table():
    text = _render(results.load_run(FIXTURE_RUN / "run.json"))
    failed = _row(text, "stream │ legacy │   64")
    assert failed == ["stream", "legacy", "64", "1", "-", "-", "-", "-", "-", "-", "-", "n/a", "n/a", "", "-",
                      "failed (see below)"]
    out = io.StringIO()
    report.print_report(
        results.load_run(FIXTURE_RUN / "run.json"),
        FIXTURE_RUN / "run.json",
        Console(file=out, width=250, color_system=None),
    )
    assert "stream size=64 conns=1: isoperf client exited 1: isoperf: error: cannot reach" in out.getvalue()


def test_verification_failure_and_uncrossed_data_are_visible():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    run["cases"] = [run["cases"][0], copy.deepcopy(run["cases"][0])]
    run["cases"][0]["isoperf"]["verified"] = False
    run["cases"][1]["device_model"]["crossed"] = False
    text = _render(run)
    assert "NO" in text
    assert "data not seen by the device model" in text


def test_port_names_come_from_the_topology():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    run["topology"]["device_model"]["ports"] = ["left", "right"]
    assert "DM frames left→right" in _render(run)


def test_print_report_names_the_run_json():
    out = io.StringIO()
    run_json = FIXTURE_RUN / "run.json"
    report.print_report(results.load_run(run_json), run_json, Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    assert f"results: {run_json}" in text
    assert "commit 0123456789ab" in text


def test_markdown_report_has_one_row_per_case():
    md = report.markdown(results.load_run(FIXTURE_RUN / "run.json"))
    rows = [ln for ln in md.splitlines() if ln.startswith("| stream")]
    assert rows[0] == (
        "| stream | legacy | 1448 | 1 | 0.988 | 85,251 | - | - | - | 61.5 | 55.2 | 1,022,000 | 511,000 |  | yes | ok |"
    )
    assert rows[1] == "| stream | legacy | 64 | 1 | - | - | - | - | - | - | - | n/a | n/a |  | - | failed |"
    header, align = md.splitlines()[6:8]
    assert header.count("|") == align.count("|") == 17
    assert "- stream size=64 conns=1: isoperf client exited 1: isoperf: error: cannot reach" in md
    assert "DM frames a→b" in md


def test_error_text_with_brackets_is_printed_verbatim():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    run["cases"][1]["error"] = "[red] bad [/bold] markup [x]"
    out = io.StringIO()
    report.print_report(run, FIXTURE_RUN / "run.json", Console(file=out, width=250, color_system=None))
    assert "[red] bad [/bold] markup [x]" in out.getvalue()


def _rr_case(run: dict) -> dict:
    case = copy.deepcopy(run["cases"][0])
    case.update(test_name="rr-64", test="rr", size=64, response_size=256)
    case["isoperf"].update(
        test="rr", transactions=12_345, transactions_per_s=2_469.0, messages_per_s=2_469.0,
        latency_us={"p50": 380.25, "p90": 420.0, "p99": 1_210.5, "p99.9": 2_000.0, "max": 5_000.0},
    )
    case["crosscheck"] = {"tool": "sockperf", "error": None, "skipped": None, "transactions_per_s": 2_600.4,
                          "latency_us": {"p50": 360.0, "p99": 1_100.0}}
    return case


def test_rr_rows_show_transactions_latency_and_the_crosscheck_rows_below():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    stream = run["cases"][0]
    stream["crosscheck"] = {"tool": "iperf3", "error": None, "skipped": None, "throughput_bps": 1.2345e9}
    run["cases"] = [stream, _rr_case(run)]
    text = _render(run)
    header = _row(text, "test")
    row = dict(zip(header, _row(text, "rr-64"), strict=True))
    assert (row["size"], row["trans/s"], row["p50 µs"], row["p99 µs"]) == ("64/256", "2,469", "380", "1,210")
    iperf3 = dict(zip(header, _row(text, "↳ iperf3"), strict=True))
    assert (iperf3["Gb/s"], iperf3["trans/s"], iperf3["stack"], iperf3["status"]) == ("1.234", "-", "legacy", "ok")
    sockperf = dict(zip(header, _row(text, "↳ sockperf"), strict=True))
    assert (sockperf["trans/s"], sockperf["p50 µs"], sockperf["p99 µs"], sockperf["conns"]) == (
        "2,600", "360", "1,100", "1"
    )
    lines = [ln for ln in text.splitlines() if "│" in ln]
    assert lines.index(next(ln for ln in lines if "↳ sockperf" in ln)) == lines.index(
        next(ln for ln in lines if "rr-64" in ln)) + 1  # right under its case
    assert "2,469 trans/s, p50 380 p99 1,210 µs" in report.summary(run["cases"][1])
    assert "sockperf 2,600 trans/s, p50 360 p99 1,100 µs" in report.summary(run["cases"][1])
    md = report.markdown(run)
    assert "| ↳ sockperf | legacy | 64/256 | 1 | - | - | 2,600 | 360 | 1,100 | - | - | - | - |  | - | ok |" in md


def test_latency_below_100_us_keeps_a_decimal():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    case = _rr_case(run)
    case["isoperf"]["latency_us"].update(p50=43.44, p99=99.96)
    run["cases"] = [case]
    row = dict(zip(report.headers(run), report.rows(run)[0], strict=True))
    assert (row["p50 µs"], row["p99 µs"]) == ("43.4", "100.0")


def test_failed_and_skipped_crosschecks_are_marked_and_explained_below():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    failed, skipped = _rr_case(run), _rr_case(run)
    failed["crosscheck"] = {"tool": "sockperf", "error": "sockperf exited 1: connection refused", "skipped": None}
    skipped["connections"] = 4
    skipped["crosscheck"] = {"tool": "sockperf", "error": None, "skipped": "sockperf ping-pong runs one connection"}
    run["cases"] = [failed, skipped]
    out = io.StringIO()
    report.print_report(run, FIXTURE_RUN / "run.json", Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    assert "failed (see below)" in _row(text, "↳ sockperf")[-1]
    assert "rr-64 size=64 conns=1: cross-check sockperf: sockperf exited 1: connection refused" in text
    assert [r[-1] for r in report.rows(run)] == ["ok", "failed", "ok", "skipped"]
    assert "rr-64 size=64 conns=4: cross-check sockperf skipped: sockperf ping-pong runs one connection" in text
    md = report.markdown(run)
    assert "## Notes" in md and "- rr-64 size=64 conns=4: cross-check sockperf skipped: sockperf ping-pong" in md


def test_instances_show_in_the_stack_column_and_the_placement_below_the_markdown_table():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    case = run["cases"][0]
    case.update(stack="iso", instances=2, client="iso-a", server="iso-b", isostackd=[
        {"instance": 0, "cpu": 1, "queues": [0]}, {"instance": 1, "cpu": 2, "queues": [1]}])
    layout = {"irqs": {"virtio0-input.0": {"irq": 29, "affinity": "1", "counts": []},
                       "virtio0-input.1": {"irq": 31, "affinity": "2", "counts": []}},
              "rps_cpus": {"rx-0": "2", "rx-1": "4"}, "xps_cpus": {}}
    case["placement"] = {"iso-b": {"mode": "legacy", "layout": {"irqs": {}, "rps_cpus": {}}},
                         "iso-a": {"mode": "isostack", "layout": layout}}
    assert report.rows(run)[0][1] == "iso×2"
    assert "iso×2" in _render(run)
    assert results.sample_row(case)["stack"] == "iso×2"
    md = report.markdown(run)
    assert "## Placement (NIC queue IRQs → vCPU, RPS masks)" in md
    assert ("iso-b legacy: no queue IRQs, RPS -; iso-a isostack (instance 0 on vCPU 1 queues 0, instance 1 on vCPU 2"
            " queues 1): input.0→1 input.1→2, RPS rx-0=2 rx-1=4") in md
    # runs stored before instances existed: one instance, no placement section
    old = results.load_run(FIXTURE_RUN / "run.json")
    assert "## Placement" not in report.markdown(old)


def _stream_case(stack: str, conns: int, mps: float, busy: float, locks: bool = False, error: str = "") -> dict:
    return {"test_name": "stream-64", "test": "stream", "stack": stack, "locks": locks, "size": 64,
            "connections": conns, "client": "iso-a", "status": "failed" if error else "ok", "error": error,
            "isoperf": {} if error else {"messages_per_s": mps, "cpu": {"client": {"all": busy}}}}


def test_comparison_divides_by_the_client_guests_consumed_cpu_and_pairs_cases_of_the_same_shape():
    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}, {"name": "iso-b", "vcpus": 2}]},
           "cases": [_stream_case("legacy", 1, 20_000, 50.0),      # 20k msgs/s on one busy vCPU of two
                     _stream_case("legacy", 16, 10_000, 100.0),
                     _stream_case("iso", 1, 150_000, 75.0),        # 1.5 vCPUs busy: 100k per CPU-second
                     _stream_case("iso", 16, 100_000, 50.0, locks=True),
                     _stream_case("iso", 4, 90_000, 50.0),         # no legacy case with 4 connections
                     _stream_case("legacy", 4, 0, 0, error="boom")]}
    rows = report.comparison_rows(run)
    # one repeat each: no interval (nothing to resample), no suspect marks
    # no host CPU in these records: those three cells are empty
    assert rows == [["stream-64", "64", "1", "legacy", "1", "20,000", "20,000", "–", "–", "–", "–", "-",
                     "-", "–", "–", ""],
                    ["stream-64", "64", "16", "legacy", "1", "10,000", "5,000", "–", "–", "–", "–", "-",
                     "-", "–", "–", ""],
                    ["stream-64", "64", "1", "iso", "1", "150,000", "100,000", "7.5", "-", "5.0", "-", "-",
                     "-", "-", "-", ""],
                    ["stream-64", "64", "16", "iso+locks", "1", "100,000", "100,000", "10.0", "-", "20.0", "-", "-",
                     "-", "-", "-", ""]]
    out = io.StringIO()
    report.print_report(run, Path("/x/run.json"), Console(file=out, width=250, color_system=None))
    assert "IsoStack vs legacy in this run" in out.getvalue()
    md_row = "| stream-64 | 64 | 16 | iso+locks | 1 | 100,000 | 100,000 | 10.0 | - | 20.0 | - | - | - | - | - |  |"
    assert md_row in report.markdown(run)


def test_comparison_takes_medians_over_repeats_and_shows_the_clients_retransmissions():
    def case(stack, mps, busy, retrans):
        c = _stream_case(stack, 4, mps, busy)
        c["tcp"] = {"client": {"retrans_pct": retrans}, "server": {"error": "unreadable"}}
        return c

    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}]},
           "cases": [case("legacy", 10_000, 50.0, 0.0), case("legacy", 30_000, 50.0, 0.5),
                     case("legacy", 20_000, 50.0, 0.1),
                     case("iso", 100_000, 50.0, 1.0), case("iso", 400_000, 100.0, 9.0),
                     _stream_case("iso", 4, 0, 0, error="stalled")]}  # a failed repeat is not a run
    rows = report.comparison_rows(run)
    # legacy medians: 20k msgs/s, 20k per CPU-s; iso medians of two: 250k msgs/s, (100k + 200k) / 2 per CPU-s
    # the intervals resample the two pairs of repeats (in run order: these records have no repeat numbers):
    # msgs/s ratio 100k/10k = 10.0, 400k/30k = 13.3 or 250k/20k = 12.5; per CPU 10.0, 6.7 or 7.5.
    # The iso case had a failed repeat: marked.
    assert rows == [["stream-64", "64", "4", "legacy", "3", "20,000", "20,000", "–", "–", "–", "–", "0.10",
                     "-", "–", "–", ""],
                    ["stream-64", "64", "4", "iso", "2", "250,000", "150,000", "12.5", "10.0–13.3", "7.5", "6.7–10.0",
                     "5.00", "-", "-", "-", "failed"]]


def test_comparison_shows_messages_per_host_cpu_second_next_to_the_guests_view():
    def case(stack, mps, busy, per_host):
        c = _stream_case(stack, 1, mps, busy)
        c["host_cpu"] = {"client_messages_per_host_cpu_s": per_host}
        return c

    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}]},
           "cases": [case("legacy", 20_000, 50.0, 16_000.0), case("legacy", 20_000, 50.0, 24_000.0),
                     case("iso", 150_000, 75.0, 200_000.0), case("iso", 150_000, 75.0, None)]}
    rows = report.comparison_rows(run)
    # host medians: legacy (16k + 24k) / 2 = 20k; iso 200k (the repeat without host CPU does not count): 10×
    # (both repeats' msgs/s and guest CPU are equal: zero-width intervals; one host-CPU pair: no interval)
    assert rows == [["stream-64", "64", "1", "legacy", "2", "20,000", "20,000", "–", "–", "–", "–", "-",
                     "20,000", "–", "–", ""],
                    ["stream-64", "64", "1", "iso", "2", "150,000", "100,000", "7.5", "7.5–7.5", "5.0", "5.0–5.0", "-",
                     "200,000", "10.0", "-", ""]]
    assert "| msgs/host-CPU-s | × legacy per host CPU |" in report.markdown(run)


def test_no_comparison_without_a_legacy_baseline():
    run = {"cases": [_stream_case("iso", 1, 150_000, 75.0)]}
    assert report.comparison_rows(run) == [] and report.build_comparison(run) is None
    assert "IsoStack vs legacy" not in report.markdown(run)


def test_no_comparison_in_a_legacy_only_run():
    run = {"cases": [_stream_case("legacy", 1, 20_000, 50.0), _stream_case("legacy", 4, 30_000, 80.0)]}
    assert report.comparison_rows(run) == [] and report.build_comparison(run) is None
    assert "IsoStack vs legacy" not in report.markdown(run)


def test_notes_name_the_cases_where_isostackd_drained_stranded_rings():
    case = _stream_case("iso", 16, 100_000, 50.0, locks=True)
    case["isostackd"] = [{"instance": 0, "stats": {"tx_stranded": 2, "tx_stranded_late_send": 2}},
                         {"instance": 1, "stats": {"tx_stranded": 0}}]
    quiet = _stream_case("iso", 1, 100_000, 50.0)
    quiet["isostackd"] = [{"instance": 0, "stats": {"tx_stranded": 0, "tx_stranded_late_send": 0}}]
    old = _stream_case("iso", 4, 100_000, 50.0)
    old["isostackd"] = [{"instance": 0, "stats": {"tx_stranded": 1}}]  # before the late-SEND counter
    assert report.notes({"cases": [case, quiet, old]}) == [
        "stream-64 size=64 conns=16 iso+locks: isostackd instance 0 drained 2 stranded tx ring(s), 2 of them with a"
        " late SEND",
        "stream-64 size=64 conns=4 iso: isostackd instance 0 drained 1 stranded tx ring(s)"]


def test_repeats_table_shows_median_interval_cv_and_marks_with_a_legend():
    def case(stack, mps, repeat, rto=0):
        c = _stream_case(stack, 1, mps, 50.0)
        c["repeat"] = repeat
        c["tcp"] = {"client": {"rto_timeouts": rto, "retrans_pct": 0.0}}
        if stack == "iso":  # host CPU for iso only: 1 vCPU-second per second, 50 or 150k msgs/host-CPU-s
            c["host_cpu"] = {"client_messages_per_host_cpu_s": (50_000, 150_000, 100_000)[repeat]}
        return c

    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}]}, "statistics": {"seed": 3},
           "cases": [case("legacy", 20_000, 0), case("iso", 200_000, 0, rto=2),
                     case("legacy", 20_000, 1), case("iso", 200_000, 1),
                     case("legacy", 20_000, 2), case("iso", 200_000, 2)]}
    # constant repeats: CV 0 and an interval of zero width; the ratio of two constants is exact
    assert report.repeats_rows(run) == [
        ["stream-64", "64", "1", "legacy", "3", "0", "20,000", "20,000–20,000", "0.0", "20,000", "20,000–20,000",
         "0.0", "-", "-", "-", ""],
        ["stream-64", "64", "1", "iso", "3", "0", "200,000", "200,000–200,000", "0.0", "200,000",
         "200,000–200,000", "0.0", "100,000", "50,000–150,000", "50.0", "RTO"]]
    assert report.comparison_rows(run)[1][7:12] == ["10.0", "10.0–10.0", "10.0", "10.0–10.0", "0.00"]
    md = report.markdown(run)
    assert "| stream-64 | 64 | 1 | iso | 3 | 0 | 200,000 | 200,000–200,000 | 0.0 |" in md
    assert "## Suspect marks" in md and "- RTO: TCP retransmission timeouts on a guest during the run" in md
    out = io.StringIO()
    report.print_report(run, Path("/x/run.json"), Console(file=out, width=250, color_system=None))
    assert "Repeats: median" in out.getvalue() and "suspect: RTO:" in out.getvalue()


def test_runs_stored_before_repeats_statistics_still_show():
    old = results.load_run(FIXTURE_RUN / "run.json")  # no order, statistics, host_load or suspect fields
    md = report.markdown(old)
    assert "## Suspect marks" not in md and "run order" not in md
    out = io.StringIO()
    report.print_report(old, FIXTURE_RUN / "run.json", Console(file=out, width=250, color_system=None))
    assert "results:" in out.getvalue()


def _placed_case(stack: str, mode: str, mps: float, repeat: int, axis: bool = True) -> dict:
    c = _stream_case(stack, 1, mps, 50.0)
    c.update(repeat=repeat, placement_mode=mode, placement_axis=axis)
    return c


def test_placement_axis_splits_the_cases_and_compares_each_stack_with_legacy_of_the_same_placement():
    cases = [_placed_case(stack, mode, mps, r) for r in range(2)
             for stack, mode, mps in (("legacy", "apart", 60_000), ("legacy", "irq", 35_000),
                                      ("iso", "apart", 300_000), ("iso", "irq", 140_000))]
    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}]}, "statistics": {"seed": 1}, "cases": cases}
    assert [row[3] for row in report.repeats_rows(run)] == ["legacy@apart", "legacy@irq", "iso@apart", "iso@irq"]
    assert [row[4] for row in report.repeats_rows(run)] == ["2", "2", "2", "2"]  # each placement its own case
    cmp = {row[3]: row[7] for row in report.comparison_rows(run)}
    assert cmp == {"legacy@apart": "–", "legacy@irq": "–", "iso@apart": "5.0", "iso@irq": "4.0"}
    assert report.rows(run)[1][1] == "legacy@irq"
    assert results.sample_row(cases[1])["stack"] == "legacy@irq"
    assert results.sample_row(cases[1])["placement"] == "irq"


def test_one_placement_keeps_the_plain_stack_labels_and_the_csv_still_names_it():
    run = {"topology": {"guests": [{"name": "iso-a", "vcpus": 2}]},
           "cases": [_placed_case("legacy", "apart", 60_000, 0, axis=False),
                     _placed_case("iso", "apart", 300_000, 0, axis=False)]}
    assert [row[3] for row in report.comparison_rows(run)] == ["legacy", "iso"]
    assert results.sample_row(run["cases"][0])["stack"] == "legacy"
    assert results.sample_row(run["cases"][0])["placement"] == "apart"


def test_placement_section_shows_the_vcpus_and_a_note_when_the_interrupts_went_elsewhere():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    case = run["cases"][0]
    layout = {"irqs": {"virtio0-input.0": {"irq": 29, "affinity": "1", "counts": []}}, "rps_cpus": {}}
    case.update(client="iso-a", server="iso-b", placement_mode="apart", placement_axis=False)
    case["placement"] = {
        "iso-b": {"mode": "legacy", "layout": layout, "placement_mode": "apart", "app_cpus": [0], "irq_cpus": [1],
                  "irq_cpus_applied": [1], "irq_cpus_measured": [1], "irqs_as_intended": True},
        "iso-a": {"mode": "legacy", "layout": layout, "placement_mode": "apart", "app_cpus": [0], "irq_cpus": [1],
                  "irq_cpus_applied": [1], "irq_cpus_measured": [0, 1], "irqs_counted": 900, "irqs_elsewhere": 300,
                  "irqs_as_intended": False}}
    md = report.markdown(run)
    assert ("iso-b legacy [apart: app on vCPU 0, IRQs on vCPU 1, taken on 1]: input.0→1, RPS -; iso-a legacy"
            " [apart: app on vCPU 0, IRQs on vCPU 1, taken on 0,1, NOT as meant]: input.0→1, RPS -") in md
    assert report.notes(run) == [f"{case['test_name']} size={case['size']} conns={case['connections']} legacy:"
                                 " iso-a: the NIC's interrupts were meant for vCPU 1, set to 1 and taken on 0,1"
                                 " (300 of 900 elsewhere): not the placement asked for"]
    case["placement"]["iso-a"]["placement_mode"] = "spread"
    case["placement"]["iso-a"].update(app_cpus=None, irq_cpus=None, irqs_as_intended=None)
    assert "iso-a legacy [spread: app on any vCPU, IRQs spread, taken on 0,1]" in report.markdown(run)
    assert report.notes(run) == []


def test_tables_off_a_terminal_print_whole_however_long_a_name():
    from testbed.console import PIPE_WIDTH, print_whole

    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    name = "stream-with-a-test-name-long-enough-that-a-140-column-table-would-cut-it-to-an-ellipsis"
    run["cases"][0]["test_name"] = name
    out = io.StringIO()
    console = Console(file=out, width=PIPE_WIDTH, color_system=None)  # a pipe: not a terminal
    report.print_report(run, FIXTURE_RUN / "run.json", console)
    text = out.getvalue()
    assert name in text and "…" not in text
    assert max(len(ln) for ln in text.splitlines()) > PIPE_WIDTH and console.width == PIPE_WIDTH
    assert _row(text, name)[-1] == "ok"  # the row whole, on one line
    tty = io.StringIO()  # on a terminal the table still fits the window
    print_whole(Console(file=tty, width=100, force_terminal=True, color_system=None), report.build_table(run))
    assert max(len(ln) for ln in tty.getvalue().splitlines()) <= 100


def test_markdown_report_says_which_commit_and_host_measured_it():
    run = copy.deepcopy(results.load_run(FIXTURE_RUN / "run.json"))
    md = report.markdown(run).splitlines()
    assert md[4] == "commit 0123456789ab, host bench-host (2 CPUs)"
    assert md[md.index("## Metadata") + 2:] == [
        "- commit: 0123456789abcdef0123456789abcdef01234567",
        "- host: bench-host, CPU ? × 2, kernel 6.1.0-27-amd64",
        "- accel: tcg, device model datapath: ?",
        "- versions: Python 3.11.7, QEMU emulator version 10.0.2, libvirt 10.10.0",
        "- guest image: recipe 0123abcd, kernel 6.1.0-27-amd64",
        "- guest iso-a: kernel 6.1.0-27-amd64, Python 3.11.2, package abababababab",
        "- guest iso-b: kernel 6.1.0-27-amd64, Python 3.11.2, package abababababab",
    ]
    run["metadata"]["git"]["dirty"] = True
    run["metadata"]["host_cpu_model"] = "Intel(R) Xeon(R) Gold 6230"
    assert report.host_line(run) == "commit 0123456789ab (dirty), host bench-host (Intel(R) Xeon(R) Gold 6230, 2 CPUs)"
    assert report.host_line({"cases": []}) == "commit unknown, host ?"
