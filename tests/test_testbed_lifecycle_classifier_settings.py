"""testbed.lifecycle.classifier_settings: the hand-over of classifier settings to guests
(publish_classifier_settings), against a running device model, with SSH replaced by a recorder."""

from __future__ import annotations

import io
import json

from rich.console import Console
from vhea_helpers import running_server

from testbed.lifecycle import classifier_settings
from testbed.state import DeviceModelInfo, GuestInfo, Topology


class FakeSFTP:
    def __init__(self, files: dict) -> None:
        self.files = files

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def putfo(self, fo, path: str) -> None:
        self.files[path] = fo.read()

    def posix_rename(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)


class FakeClient:
    def __init__(self, files: dict) -> None:
        self.files = files

    def open_sftp(self) -> FakeSFTP:
        return FakeSFTP(self.files)

    def close(self) -> None:
        pass


def topology(sockdir: str) -> Topology:
    guests = [GuestInfo(name=f"iso-{p}", ssh_host="127.0.0.1", ssh_port=22000 + i, data_ip=f"10.10.0.{i + 1}",
                        data_mac="52:54:00:10:00:01", port=p, vcpus=1, memory_mib=512, mgmt_mac="52:54:00:ff:00:01",
                        console_log="/dev/null") for i, p in enumerate("ab")]
    return Topology(state_dir=sockdir, uri="qemu:///embed", accel="tcg", ssh_user="root", ssh_key="/nonexistent",
                    image={}, device_model=DeviceModelInfo(socket_dir=sockdir, pid=0, ports=["a", "b"], log=""),
                    guests=guests, supervisor_pid=0, options={})


def test_each_guest_gets_its_ports_settings(sockdir, monkeypatch):
    files: dict[int, dict] = {}
    commands: list[tuple[int, str]] = []

    def connect(host, port, user, key):
        files[port] = {}
        return FakeClient(files[port])

    def run(client, cmd, timeout_s=60.0):
        commands.append((next(p for p, f in files.items() if f is client.files), cmd))
        return 0, "", ""

    monkeypatch.setattr(classifier_settings, "connect", connect)
    monkeypatch.setattr(classifier_settings, "run", run)
    with running_server(sockdir, ["a", "b"], queue_pairs=2) as server:
        server.control_request(b'{"cmd": "rule-add", "port": "b", "proto": "tcp", "dport": 5201, "queue": 1}')
        server.control_request(b'{"cmd": "rss-set", "port": "a", "reta": [1, 0]}')
        out = io.StringIO()
        classifier_settings.publish_classifier_settings(topology(sockdir), Console(file=out))
    assert "warning" not in out.getvalue()
    assert commands == [(22000, "mkdir -p /etc/isostack"), (22001, "mkdir -p /etc/isostack")]
    a = json.loads(files[22000]["/etc/isostack/classifier.json"])
    b = json.loads(files[22001]["/etc/isostack/classifier.json"])
    assert a["port"] == "a" and a["reta"] == [1, 0] and a["rules"] == [] and a["queues"] == 2
    assert b["port"] == "b" and len(b["reta"]) == 128 and b["rules"][0]["dport"] == 5201
    assert "counters" not in a and "ok" not in a
    assert set(a) == {"port", "queues", "key", "hash_types", "reta", "rules"}


def test_failures_are_warnings(sockdir, monkeypatch):
    def connect(host, port, user, key):
        raise OSError("connection refused")

    monkeypatch.setattr(classifier_settings, "connect", connect)
    out = io.StringIO()
    with running_server(sockdir, ["a", "b"]):
        classifier_settings.publish_classifier_settings(topology(sockdir), Console(file=out, width=200))
    assert out.getvalue().count("could not write /etc/isostack/classifier.json") == 2
    out = io.StringIO()
    classifier_settings.publish_classifier_settings(topology(sockdir), Console(file=out, width=200))  # no device model
    assert "no device model is listening" in out.getvalue()
