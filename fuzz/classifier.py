"""The classifier's header parsing and queue choice (vhea/classifier.py, vhea/toeplitz.py).

Contract: parse_flow and PortClassifier.classify never raise on any frame; the queue is in range and the
same on a second look (the flow cache and its IPv4 fast path agree with the slow path); the RSS queue is the
RETA entry of the Toeplitz hash, which agrees with the bit-by-bit reference; configuration (add_rule,
set_rss) with any values raises ConfigError and nothing else.

Input: a byte of queue pairs and hash types, a byte choosing extra configuration, then the frame.
"""

from __future__ import annotations

from vhea.classifier import HASH_TYPES, PortClassifier, parse_flow
from vhea.errors import ConfigError
from vhea.toeplitz import DEFAULT_KEY, hash_reference

from .reader import Reader

TARGETS = ("vhea.classifier", "vhea.toeplitz")
#: one port per queue-pair count, set back to its defaults per input through the configuration API (a new port
#: builds its Toeplitz tables: most of an input's time)
PORTS = {n: PortClassifier(n) for n in range(1, 5)}


def _port(pairs: int) -> PortClassifier:
    pc = PORTS[pairs]
    for rule_id in list(pc.rules):
        pc.del_rule(rule_id)
    pc.set_rss(key=DEFAULT_KEY, hash_types=HASH_TYPES, queues=pairs)
    return pc

ODD = [0, 1, 2, 7, 65535, 65536, -1, True, None, "1", 1.0, "tcp", "udp", "icmp", "10.0.0.1", "::1", "fe80::1%eth0",
       "10.0.0.256", [], [0, 1], [0] * 3, [1] * 4]


def _configure(r: Reader, pc: PortClassifier) -> None:
    what = r.u8()
    try:
        if what & 1:
            pc.add_rule(r.pick(ODD), r.pick(ODD), r.pick(ODD))
        if what & 2:
            pc.add_rule(r.pick(ODD), r.pick(ODD), r.pick(ODD), r.pick(ODD), r.pick(ODD), r.pick(ODD))
        if what & 4:
            pc.set_rss(reta=r.pick(ODD) if what & 8 else None, queues=r.pick(ODD) if what & 16 else None,
                       key=r.take(40) if what & 32 else None)
        if what & 64:
            pc.del_rule(r.pick(ODD))
    except ConfigError:
        pass


def one_input(data: bytes) -> None:
    r = Reader(data)
    b = r.u8()
    pairs = 1 + (b & 3)
    types = frozenset(t for i, t in enumerate(HASH_TYPES) if b >> 2 & (1 << i)) if b & 0x80 else None
    pc = _port(pairs)
    if types is not None:
        pc.set_rss(hash_types=sorted(types))
    _configure(r, pc)
    frame = r.rest()
    flow = parse_flow(frame)
    if flow is not None:
        version, proto, addrs, ports = flow
        assert version in (4, 6) and 0 <= proto <= 255
        assert len(addrs) == (8 if version == 4 else 32) and len(ports) in (0, 4)
        data_in = pc.hash_input(version, proto, addrs, ports, pc.hash_types)
        if data_in is not None and pc.key == DEFAULT_KEY:
            assert pc.toeplitz.hash(data_in) == hash_reference(pc.key, data_in)
    counted = sum(pc.per_queue)
    q1 = pc.classify(frame)
    q2 = pc.classify(frame)  # now from the flow cache (and its fast path for plain IPv4)
    assert q1 == q2 and 0 <= q1 < pairs
    if flow is not None and not pc.rules:
        data_in = pc.hash_input(*flow, pc.hash_types)
        want = 0 if data_in is None else pc.reta[pc.toeplitz.hash(data_in) & (len(pc.reta) - 1)]
        assert q1 == want, (q1, want)
    assert sum(pc.per_queue) == counted + 2
