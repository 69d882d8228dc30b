"""The HEA's receive classifier: which rx queue of a port a frame goes to.

Per port, in this order:
  1. exact-match flow rules: a 5-tuple (proto, src, dst, sport, dport) or proto + destination port -> queue
     (the 5-tuple rules first, then the dst-port rules);
  2. RSS: the Toeplitz hash (toeplitz.py) over the frame's tuple with the port's key, if the frame's type is
     among the enabled hash types; queue = reta[hash & (len(reta) - 1)];
  3. queue 0 (non-IP frames, ARP, hash type not enabled, anything we cannot parse).

The tuple is that of the frame as it arrives at the guest: src/sport are the sender's, dst/dport the
guest's. Hash types follow virtio-net/Microsoft: tcp4/udp4 (tcp6/udp6) hash addresses + ports of an
unfragmented TCP/UDP packet; ipv4 (ipv6) hashes the two addresses of any other IPv4 (IPv6) packet, and of
TCP/UDP packets whose L4 type is not enabled or that are fragments.

Frames come from untrusted guests: the parser checks every length (truncated headers, IHL < 5 or beyond
the frame, IPv6 extension header chains that run off the end) and answers "not IP" rather than raising.

Why the host configures this and not the guest: QEMU does not offer VIRTIO_NET_F_RSS to a guest over
vhost-user (tests/test_vhea_mq_vm.py checks it), so, as on the HEA, the adapter's owner sets classification
(`vhea rule`, `vhea rss`) and the testbed hands each guest a copy (/etc/isostack/classifier.json;
isostack/rss.py predicts queues from it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ConfigError
from .toeplitz import DEFAULT_KEY, KEY_LEN, Toeplitz

HASH_TYPES = ("ipv4", "tcp4", "udp4", "ipv6", "tcp6", "udp6")
DEFAULT_HASH_TYPES = frozenset(HASH_TYPES)
DEFAULT_RETA_LEN = 128
MAX_RETA_LEN = 1024
PROTOS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
#: flows remembered between configuration changes (cleared when full)
FLOW_CACHE_MAX = 65536

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
#: IPv6 extension headers we step over to reach TCP/UDP (AH has its own length unit)
IPV6_EXT = {0, 43, 60, 51}
IPV6_FRAG = 44
MAX_EXT_HEADERS = 8


def parse_flow(frame: bytes) -> tuple[int, int, bytes, bytes] | None:
    """(IP version, L4 protocol, src+dst address bytes, sport+dport bytes or b"") or None if not IP.

    Ports are b"" for fragments, truncated L4 headers and protocols other than TCP and UDP.
    """
    n = len(frame)
    if n < 14:
        return None
    off = 12
    etype = (frame[12] << 8) | frame[13]
    tags = 0
    while etype in VLAN_TPIDS and tags < 2:
        off += 4
        if n < off + 2:
            return None
        etype = (frame[off] << 8) | frame[off + 1]
        tags += 1
    off += 2
    if etype == ETH_P_IP:
        if n < off + 20:
            return None
        vihl = frame[off]
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or n < off + ihl:
            return None
        proto = frame[off + 9]
        addrs = frame[off + 12:off + 20]
        if frame[off + 6] & 0x3F or frame[off + 7]:  # MF flag or a fragment offset
            return 4, proto, addrs, b""
        l4 = off + ihl
        if proto in (6, 17) and n >= l4 + 4:
            return 4, proto, addrs, frame[l4:l4 + 4]
        return 4, proto, addrs, b""
    if etype == ETH_P_IPV6:
        if n < off + 40 or frame[off] >> 4 != 6:
            return None
        addrs = frame[off + 8:off + 40]
        nh = frame[off + 6]
        pos = off + 40
        for _ in range(MAX_EXT_HEADERS):
            if nh in IPV6_EXT:
                if n < pos + 8:
                    return 6, nh, addrs, b""
                length = (frame[pos + 1] + 2) * 4 if nh == 51 else (frame[pos + 1] + 1) * 8
                nh = frame[pos]
                pos += length
            elif nh == IPV6_FRAG:
                if n < pos + 8:
                    return 6, nh, addrs, b""
                if ((frame[pos + 2] << 8) | frame[pos + 3]) & 0xFFF9:  # offset or M flag: a fragment
                    return 6, frame[pos], addrs, b""
                nh = frame[pos]
                pos += 8
            else:
                break
        else:
            return 6, nh, addrs, b""  # too many extension headers: addresses only
        if nh in (6, 17) and n >= pos + 4:
            return 6, nh, addrs, frame[pos:pos + 4]
        return 6, nh, addrs, b""
    return None


@dataclass
class Rule:
    id: int
    proto: str
    dport: int
    queue: int
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    hits: int = 0

    def to_json(self) -> dict:
        return {"id": self.id, "proto": self.proto, "src": self.src, "dst": self.dst, "sport": self.sport,
                "dport": self.dport, "queue": self.queue, "hits": self.hits}


def _port_number(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{what} must be an integer 0..65535, not {value!r}")
    return value


class PortClassifier:
    """Rules, RSS settings and counters of one port; `classify(frame)` -> queue pair index."""

    def __init__(self, queue_pairs: int) -> None:
        self.queue_pairs = queue_pairs
        self.key = DEFAULT_KEY
        self.toeplitz = Toeplitz(DEFAULT_KEY)
        self.hash_types: frozenset[str] = DEFAULT_HASH_TYPES
        self.reta = [i % queue_pairs for i in range(DEFAULT_RETA_LEN)]
        self.rules: dict[int, Rule] = {}
        self.next_id = 1
        self._exact: dict[tuple[int, bytes], Rule] = {}
        self._dport: dict[tuple[int, int], Rule] = {}
        self._cache: dict[tuple[int, bytes], tuple[int, Rule | None, bool]] = {}
        self.counts = {"rule": 0, "rss": 0, "default": 0, "not_ready_fallback": 0}
        self.per_queue = [0] * queue_pairs

    # ---- the per-frame path --------------------------------------------------------------------------------

    def classify(self, frame: bytes) -> int:
        """The queue pair for this frame (counts it; never raises on any frame)."""
        # fast path: an untagged, unfragmented IPv4 TCP/UDP frame without options whose flow is cached.
        # The counting below repeats the slow path's on purpose: a helper call per frame is a measurable
        # share of this path's cost.
        if frame[12:14] == b"\x08\x00" and len(frame) >= 38 and frame[14] == 0x45 and \
                not (frame[20] & 0x3F or frame[21]) and frame[23] in (6, 17):
            hit = self._cache.get((frame[23], frame[26:38]))
            if hit is not None:
                queue, rule, hashed = hit
                if rule is not None:
                    rule.hits += 1
                    self.counts["rule"] += 1
                elif hashed:
                    self.counts["rss"] += 1
                else:
                    self.counts["default"] += 1
                self.per_queue[queue] += 1
                return queue
        flow = parse_flow(frame)
        if flow is None:
            self.counts["default"] += 1
            self.per_queue[0] += 1
            return 0
        version, proto, addrs, ports = flow
        ck = (proto, addrs + ports)
        hit = self._cache.get(ck)
        if hit is None:
            hit = self._decide(version, proto, addrs, ports)
            if len(self._cache) >= FLOW_CACHE_MAX:
                self._cache.clear()
            self._cache[ck] = hit
        queue, rule, hashed = hit
        if rule is not None:
            rule.hits += 1
            self.counts["rule"] += 1
        elif hashed:
            self.counts["rss"] += 1
        else:
            self.counts["default"] += 1
        self.per_queue[queue] += 1
        return queue

    def _decide(self, version: int, proto: int, addrs: bytes, ports: bytes) -> tuple[int, Rule | None, bool]:
        if ports:
            rule = self._exact.get((proto, addrs + ports))
            if rule is None:
                rule = self._dport.get((proto, (ports[2] << 8) | ports[3]))
            if rule is not None:
                return rule.queue, rule, False
        data = self.hash_input(version, proto, addrs, ports, self.hash_types)
        if data is None:
            return 0, None, False
        reta = self.reta
        return reta[self.toeplitz.hash(data) & (len(reta) - 1)], None, True

    @staticmethod
    def hash_input(version: int, proto: int, addrs: bytes, ports: bytes, types: frozenset[str]) -> bytes | None:
        v = "4" if version == 4 else "6"
        if ports and ((proto == 6 and "tcp" + v in types) or (proto == 17 and "udp" + v in types)):
            return addrs + ports
        if "ipv" + v in types:
            return addrs
        return None

    # ---- configuration -------------------------------------------------------------------------------------

    def _check_queue(self, queue) -> int:
        if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue < self.queue_pairs:
            raise ConfigError(f"queue {queue!r} is beyond this port's {self.queue_pairs} queue pair(s) "
                              f"(0..{self.queue_pairs - 1})")
        return queue

    def add_rule(self, proto, dport, queue, src=None, dst=None, sport=None) -> Rule:
        if not isinstance(proto, str) or proto not in PROTOS:  # a list from JSON is not hashable
            raise ConfigError(f"proto must be one of {', '.join(PROTOS)}, not {proto!r}")
        dport = _port_number(dport, "dport")
        queue = self._check_queue(queue)
        five = (src, dst, sport)
        if any(x is not None for x in five) and any(x is None for x in five):
            raise ConfigError("a 5-tuple rule needs src, dst, sport and dport; a port rule only proto and dport")
        pnum = PROTOS[proto]
        if src is None:
            key: tuple = (pnum, dport)
            table: dict = self._dport
        else:
            try:
                s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if s.version != d.version:
                raise ConfigError(f"src {src} and dst {dst} are not of the same IP version")
            sport = _port_number(sport, "sport")
            src, dst = str(s), str(d)
            key = (pnum, s.packed + d.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
            table = self._exact
        if key in table:
            raise ConfigError(f"rule {table[key].id} already matches that flow")
        rule = Rule(self.next_id, proto, dport, queue, src, dst, sport)
        self.next_id += 1
        table[key] = rule
        self.rules[rule.id] = rule
        self._cache.clear()
        return rule

    def del_rule(self, rule_id) -> Rule:
        rule = self.rules.pop(rule_id, None) if isinstance(rule_id, int) else None
        if rule is None:
            raise ConfigError(f"no rule with id {rule_id!r} (ids: {', '.join(map(str, self.rules)) or 'none'})")
        for table in (self._exact, self._dport):
            for k in [k for k, r in table.items() if r is rule]:
                del table[k]
        self._cache.clear()
        return rule

    def set_rss(self, key: bytes | None = None, hash_types=None, reta=None, queues: int | None = None) -> None:
        """Change any of key, hash types and RETA (or spread the RETA over `queues`); all or nothing."""
        if reta is not None and queues is not None:
            raise ConfigError("give a RETA or a number of queues, not both")
        new_key = self.key
        if key is not None:
            if len(key) != KEY_LEN:
                raise ConfigError(f"the RSS key must be {KEY_LEN} bytes ({2 * KEY_LEN} hex digits), not {len(key)}")
            new_key = bytes(key)
        new_types = self.hash_types
        if hash_types is not None:
            bad = [t for t in hash_types if t not in HASH_TYPES]
            if bad:
                raise ConfigError(f"unknown hash type(s) {', '.join(map(str, bad))}; known: {', '.join(HASH_TYPES)}")
            new_types = frozenset(hash_types)
        new_reta = self.reta
        if queues is not None:
            if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= self.queue_pairs:
                raise ConfigError(f"queues must be 1..{self.queue_pairs} for this port, not {queues!r}")
            new_reta = [i % queues for i in range(len(self.reta))]
        if reta is not None:
            if not isinstance(reta, list) or not reta:
                raise ConfigError("the RETA must be a non-empty list of queue numbers")
            n = len(reta)
            if n > MAX_RETA_LEN or n & (n - 1):
                raise ConfigError(f"the RETA length must be a power of two up to {MAX_RETA_LEN}, not {n}")
            new_reta = [self._check_queue(q) for q in reta]
        if new_key != self.key:
            self.toeplitz = Toeplitz(new_key)
            self.key = new_key
        self.hash_types = new_types
        self.reta = list(new_reta)
        self._cache.clear()

    # ---- reporting -----------------------------------------------------------------------------------------

    def settings(self) -> dict:
        """What a guest needs to predict the queue of any flow (the file the testbed writes)."""
        return {
            "queues": self.queue_pairs,
            "key": self.key.hex(),
            "hash_types": [t for t in HASH_TYPES if t in self.hash_types],
            "reta": list(self.reta),
            "rules": [r.to_json() for r in self.rules.values()],
        }

    def stats(self) -> dict:
        return {**self.counts, "classified": list(self.per_queue)}


def select_rx_ring(classifier: PortClassifier, rings: list, frame: bytes):
    """The rx ring for a frame: the classified pair's if ready, else pair 0 (counted), else any ready one.

    A port with one queue pair has nothing to choose: its frames are not classified (nor counted).
    """
    if len(rings) <= 2:
        ring = rings[0] if rings else None
        return ring if ring is not None and ring.ready else None
    q = classifier.classify(frame)
    if q:
        ring = rings[2 * q] if 2 * q < len(rings) else None
        if ring is not None and ring.ready:
            return ring
        classifier.counts["not_ready_fallback"] += 1
    for ring in rings[0::2]:
        if ring.ready:
            return ring
    return None
