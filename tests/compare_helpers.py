"""Synthetic runs with known differences for the comparison tests: run.json dicts as the harness stores them,
with only the fields `fab compare` reads (isoperf's messages/s, CPU and latency, the host CPU figure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL = "Intel(R) Xeon(R) Processor"


def record(test_name: str, stack: str, repeat: int, mps: float | None, conns: int = 1, size: int = 64,
           busy: float = 50.0, latency: tuple[float, float] | None = None, duration: float = 3.0) -> dict:
    """One repeat of a case; `mps` None makes it a failed repeat. Consumed CPU `busy` % of 2 vCPUs."""
    test = "rr" if latency else "stream"
    case = {"test_name": test_name, "test": test, "stack": stack, "locks": False, "instances": 1, "size": size,
            "connections": conns, "repeat": repeat, "duration": duration, "warmup": 1, "verify": False,
            "response_size": None, "intervals": 1, "sndbuf": None, "client": "iso-a", "server": "peer",
            "status": "ok", "error": None, "isoperf": None, "host_cpu": None}
    if mps is None:
        case.update(status="failed", error="isoperf: connection refused")
        return case
    case["isoperf"] = {"messages_per_s": mps, "cpu": {"client": {"all": busy}}}
    if latency:
        case["isoperf"]["latency_us"] = {"p50": latency[0], "p99": latency[1]}
    case["host_cpu"] = {"client_messages_per_host_cpu_s": mps / (busy / 100)}
    return case


def run(cases: list[dict], run_id: str = "20261201T000000Z", accel: str = "tcg", complete: bool = True,
        playbook: str = "nightly", seed: int = 7, cpus: int = 2, model: str | None = MODEL) -> dict:
    return {"format": 1, "run_id": run_id, "started_at": "2026-12-01T00:00:00.000000Z",
            "ended_at": "2026-12-01T00:05:00.000000Z" if complete else None,
            "metadata": {"git": {"commit": "ab" * 20, "dirty": False}, "host_cpu_count": cpus,
                         "host_cpu_model": model, "accel": accel, "device_model_datapath": "native"},
            "topology": {"accel": accel, "guests": [{"name": "iso-a", "vcpus": 2}]},
            "playbook": {"name": playbook, "sha256": "0" * 64},
            "statistics": {"seed": seed, "resamples": 2000, "confidence": 0.95, "cases": None},
            "cases": cases}


def noisy(level: float, cv: float, n: int, rng: np.random.Generator) -> list[float]:
    return [float(v) for v in rng.normal(level, cv * level, n)]


def stream_run(values: dict[str, list[float | None]], run_id: str = "20261201T000000Z", **kw) -> dict:
    """A run with one 64-byte stream case per stack ("legacy", "iso"): its repeats' messages/s."""
    cases = [record("stream-64", stack, i, v) for stack, vs in values.items() for i, v in enumerate(vs)]
    return run(cases, run_id, **kw)


def write(run_dict: dict, root: Path) -> Path:
    """Store the run as <root>/<run_id>/run.json; returns the run.json."""
    d = root / run_dict["run_id"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.json").write_text(json.dumps(run_dict))
    return d / "run.json"
