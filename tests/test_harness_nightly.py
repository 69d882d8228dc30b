"""The nightly's wiring without VMs: the playbook, `make nightly`, `fab nightly` and the CI workflow agree.
(The comparison step itself is tested on stored runs in test_harness_comparing.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from test_harness_fabfile import _fab

from testbed.harness.playbook import load_playbook

REPO = Path(__file__).resolve().parents[1]


def test_the_nightly_playbook_covers_the_seed_figures_with_enough_repeats_for_a_verdict():
    cases = load_playbook(REPO / "playbooks" / "nightly.yaml").cases()
    assert {c.stack for c in cases} == {"legacy", "iso"}
    assert {c.spec.test for c in cases} == {"stream", "rr"}  # throughput and latency
    assert any(c.server_stack == "iso" and c.spec.client == "peer" for c in cases)  # receive through IsoStack
    assert any(c.locks for c in cases) and any(c.stack == "iso" and not c.locks for c in cases)  # the locks figure
    assert len({c.size for c in cases if c.spec.test == "stream" and c.spec.client != "peer"}) >= 3  # tx vs size
    assert {1, 16} <= {c.connections for c in cases if c.size == 64}  # 64 B vs connections
    assert min(c.spec.repeats for c in cases) >= 3  # compare.Settings.min_repeats
    assert max(c.spec.duration for c in cases) <= 5  # CI-sized


def test_make_nightly_brings_the_testbed_up_and_runs_fab_nightly():
    out = subprocess.run(["make", "-n", "nightly", "VENV=/v", "NIGHTLY_RESULTS=/r", "NIGHTLY_FLAGS=--promote",
                          "TESTBED_FLAGS=--accel tcg"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "/v/bin/testbed up --accel tcg" in out
    assert "/v/bin/fab nightly --results-dir /r --promote" in out


def test_fab_nightly_without_a_testbed_is_a_clear_error(tmp_path):
    r = _fab("nightly", "--state-dir", str(tmp_path), "--results-dir", str(tmp_path / "res"))
    assert r.returncode == 2 and "nightly: " in r.stderr and "no testbed is up" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_workflow_runs_make_nightly_under_kvm_and_tcg_and_publishes_the_run():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    kvm, tcg = wf["jobs"]["kvm"], wf["jobs"]["tcg"]
    assert "kvm" in kvm["runs-on"] and "self-hosted" in kvm["runs-on"]
    assert tcg["runs-on"] == "ubuntu-latest"
    for job, accel in ((kvm, "kvm"), (tcg, "tcg")):
        runs = " ".join(step.get("run", "") for step in job["steps"])
        assert "make nightly" in runs and f'TESTBED_FLAGS="--accel {accel}"' in runs
        uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
        assert uploads and uploads[0]["if"] == "always()" and "NIGHTLY_RESULTS" in uploads[0]["with"]["path"]
