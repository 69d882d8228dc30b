"""Predict the rx queue a flow lands on, from the classifier settings the testbed writes into each guest.

The device model (vhea) classifies frames for the guest, as an HEA does: exact-match rules first (5-tuple,
then protocol + destination port), then RSS (the Toeplitz hash over the tuple with the port's key, if the
flow's hash type is enabled, and queue = reta[hash & (len(reta) - 1)]), else queue 0. The guest cannot
change this (QEMU does not offer VIRTIO_NET_F_RSS over vhost-user), so `testbed up` writes the port's
settings to /etc/isostack/classifier.json:

    {"queues": 2, "key": "<80 hex digits>", "hash_types": ["ipv4", "tcp4", ...],
     "reta": [0, 1, 0, 1, ...], "rules": [{"proto": "tcp", "src": null, "dst": null, "sport": null,
     "dport": 5001, "queue": 1, ...}, ...]}

The tuple is that of frames as they arrive at this guest: src/sport are the peer's, dst/dport ours. For a
connection, `queue_for_connection(local_ip, local_port, remote_ip, remote_port)` swaps them for you.

Stdlib only, and on purpose a copy of the few lines of vhea's toeplitz/classifier it needs: the guest image
carries the isostack package, not the device model. tests/test_vhea_toeplitz_guest.py checks that both
agree on the published vectors and on random tuples, keys, tables and rules.

    python3 rss.py SRC DST SPORT DPORT [--proto tcp|udp] [--file PATH]   prints the queue
"""

from __future__ import annotations

import ipaddress
import json
import sys

DEFAULT_PATH = "/etc/isostack/classifier.json"
PROTOS = {"tcp": 6, "udp": 17}


def toeplitz(key: bytes, data: bytes) -> int:
    """The Toeplitz hash: XOR of the 32-bit key window at every set input bit (MSB first)."""
    k = int.from_bytes(key, "big")
    kbits = len(key) * 8
    d = int.from_bytes(data, "big")
    n = len(data) * 8
    result = 0
    while d:
        low = d & -d
        i = n - low.bit_length()  # index of this bit counted from the input's first (most significant) bit
        result ^= (k >> (kbits - 32 - i)) & 0xFFFFFFFF
        d ^= low
    return result


class Classifier:
    def __init__(self, settings: dict) -> None:
        self.queues = int(settings["queues"])
        self.key = bytes.fromhex(settings["key"])
        self.hash_types = set(settings["hash_types"])
        self.reta = [int(q) for q in settings["reta"]]
        self.rules = list(settings.get("rules", []))

    @classmethod
    def from_file(cls, path: str = DEFAULT_PATH) -> Classifier:
        with open(path) as f:
            return cls(json.load(f))

    def queue(self, src: str, dst: str, sport: int | None = None, dport: int | None = None,
              proto: str = "tcp") -> int:
        """The rx queue of a frame src:sport -> dst:dport (dst is this guest) of `proto` (tcp, udp, other)."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        has_ports = proto in PROTOS and sport is not None and dport is not None
        if has_ports:
            for r in self.rules:  # 5-tuple rules first
                if r["proto"] == proto and r.get("src") is not None and r["dport"] == dport \
                        and r["sport"] == sport and ipaddress.ip_address(r["src"]) == s \
                        and ipaddress.ip_address(r["dst"]) == d:
                    return int(r["queue"])
            for r in self.rules:
                if r["proto"] == proto and r.get("src") is None and r["dport"] == dport:
                    return int(r["queue"])
        v = str(s.version)
        data = None
        if has_ports and proto[:3] + v in self.hash_types:
            data = s.packed + d.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        elif "ipv" + v in self.hash_types:
            data = s.packed + d.packed
        if data is None:
            return 0
        return self.reta[toeplitz(self.key, data) & (len(self.reta) - 1)]

    def queue_for_connection(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int,
                             proto: str = "tcp") -> int:
        """The rx queue of the frames a connection receives."""
        return self.queue(remote_ip, local_ip, remote_port, local_port, proto)


def ports_for_queues(classifier: Classifier, local_ip: str, remote_ip: str, remote_port: int, queues,
                     lo: int = 32768, hi: int = 60999, start: int | None = None, limit: int = 4096):
    """Yield (local port, rx queue) for the source ports in lo..hi whose connection to remote_ip:remote_port
    lands on one of `queues`: how an IsoStack instance picks the port of an active open.  Scans at most
    `limit` ports from `start` (random by default, so that processes do not all try the same ports first)."""
    import random

    queues = set(queues)
    span = hi - lo + 1
    if span <= 0:
        return
    first = random.randrange(span) if start is None else (start - lo) % span
    for i in range(min(limit, span)):
        port = lo + (first + i) % span
        q = classifier.queue_for_connection(local_ip, port, remote_ip, remote_port)
        if q in queues:
            yield port, q


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="predict the rx queue of a flow arriving at this guest")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("sport", type=int)
    ap.add_argument("dport", type=int)
    ap.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    ap.add_argument("--file", default=DEFAULT_PATH)
    a = ap.parse_args(argv)
    print(Classifier.from_file(a.file).queue(a.src, a.dst, a.sport, a.dport, a.proto))
    return 0


if __name__ == "__main__":
    sys.exit(main())
