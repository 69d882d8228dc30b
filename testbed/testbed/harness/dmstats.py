"""Device-model counters (`vhea stats --json`) and their change over one test.

A benchmark figure only counts if the bytes went through the virtual switch: the runner snapshots the
counters around each test and stores the per-port deltas next to the isoperf result.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field

from testbed.devicemodel import vhea_command

COUNTERS = ("from_guest_frames", "from_guest_bytes", "to_guest_frames", "to_guest_bytes")


class StatsError(RuntimeError):
    """Counters that cannot be read or compared."""


@dataclass(frozen=True)
class PortDelta:
    """What one switch port carried during a test (frames/bytes are Ethernet frames)."""

    from_guest_frames: int
    from_guest_bytes: int
    to_guest_frames: int
    to_guest_bytes: int
    drops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_stats(text: str) -> dict[str, dict]:
    """Validate `vhea stats --json` output; returns {port: {counter: int, "drops": {reason: int}}}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise StatsError(f"vhea stats did not print JSON: {e}") from None
    ports = data.get("ports") if isinstance(data, dict) else None
    if not isinstance(ports, dict):
        raise StatsError("vhea stats JSON has no 'ports' mapping")
    out: dict[str, dict] = {}
    for name, port in ports.items():
        if not isinstance(port, dict):
            raise StatsError(f"vhea stats: port {name!r} is not a mapping")
        counters = {}
        for key in COUNTERS:
            value = port.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise StatsError(f"vhea stats: port {name!r} has no integer {key!r}")
            counters[key] = value
        drops = port.get("drops", {})
        if not isinstance(drops, dict) or not all(isinstance(v, int) for v in drops.values()):
            raise StatsError(f"vhea stats: port {name!r} has malformed 'drops'")
        counters["drops"] = dict(drops)
        out[name] = counters
    return out


def stats_delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, PortDelta]:
    """Per-port counter increase; a counter going down means the device model restarted mid-test."""
    deltas: dict[str, PortDelta] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            raise StatsError(f"port {name!r} disappeared from the device model during the test")
        values = {}
        for key in COUNTERS:
            d = a[key] - b[key]
            if d < 0:
                raise StatsError(
                    f"port {name!r} counter {key} went down ({b[key]} -> {a[key]}): "
                    "the device model restarted during the test"
                )
            values[key] = d
        reasons = set(a["drops"]) | set(b["drops"])
        drops = {r: a["drops"].get(r, 0) - b["drops"].get(r, 0) for r in sorted(reasons)}
        deltas[name] = PortDelta(**values, drops={r: d for r, d in drops.items() if d})
    return deltas


def read_stats(socket_dir: str, timeout_s: float = 15.0) -> dict[str, dict]:
    """Run `vhea stats --socket-dir D --json` and parse it."""
    return parse_stats(_stats_json(socket_dir, timeout_s))


def parse_datapath(text: str) -> str | None:
    """The datapath `vhea stats --json` names ("native" or "python"; vhea before the field had only python)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("datapath", "python")
    return value if isinstance(value, str) else None


def read_datapath(socket_dir: str, timeout_s: float = 15.0) -> str | None:
    """The running device model's datapath for run.json (best effort: None when vhea cannot be asked)."""
    try:
        return parse_datapath(_stats_json(socket_dir, timeout_s))
    except StatsError:
        return None


def _stats_json(socket_dir: str, timeout_s: float) -> str:
    cmd = vhea_command() + ["stats", "--socket-dir", socket_dir, "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StatsError(f"cannot run {' '.join(cmd)}: {e}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise StatsError(f"vhea stats exited {proc.returncode}: {tail}")
    return proc.stdout


def crossed_device_model(delta: dict[str, PortDelta], client_port: str, payload_bytes: int) -> bool:
    """True if the client's port took in at least as many frame bytes as the server counted payload."""
    port = delta.get(client_port)
    return port is not None and port.from_guest_bytes >= payload_bytes > 0
