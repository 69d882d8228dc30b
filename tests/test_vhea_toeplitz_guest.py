"""The guest's copy (isostack/rss.py, stdlib only) agrees with the device model's classifier."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_vhea_classifier import ipv4_frame, ipv6_frame

from isostack import rss
from vhea.classifier import HASH_TYPES, PortClassifier
from vhea.toeplitz import DEFAULT_KEY, hash_reference

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "rss-toeplitz-vectors.json").read_text())


@pytest.mark.parametrize("v", VECTORS["ipv4"] + VECTORS["ipv6"], ids=lambda v: v["src"])
def test_guest_hash_matches_the_published_vectors(v):
    s, d = ipaddress.ip_address(v["src"]).packed, ipaddress.ip_address(v["dst"]).packed
    ports = v["sport"].to_bytes(2, "big") + v["dport"].to_bytes(2, "big")
    assert rss.toeplitz(DEFAULT_KEY, s + d) == int(v["hash_ip"], 16)
    assert rss.toeplitz(DEFAULT_KEY, s + d + ports) == int(v["hash_ip_tcp"], 16)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=40, max_size=40), data=st.binary(max_size=36))
def test_guest_hash_equals_reference(key, data):
    assert rss.toeplitz(key, data) == hash_reference(key, data)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), queues=st.integers(1, 8), v6=st.booleans(), proto=st.sampled_from(["tcp", "udp"]),
       key=st.binary(min_size=40, max_size=40), types=st.sets(st.sampled_from(HASH_TYPES)),
       reta_bits=st.integers(0, 7), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       n_rules=st.integers(0, 3))
def test_guest_prediction_equals_device_classification(data, queues, v6, proto, key, types, reta_bits, sport,
                                                       dport, n_rules):
    version = 6 if v6 else 4
    src = str(data.draw(st.ip_addresses(v=version)))
    dst = str(data.draw(st.ip_addresses(v=version)))
    c = PortClassifier(queues)
    reta = data.draw(st.lists(st.integers(0, queues - 1), min_size=1 << reta_bits, max_size=1 << reta_bits))
    c.set_rss(key=key, hash_types=sorted(types), reta=reta)
    for i in range(n_rules):  # rules that may or may not match this flow
        q = data.draw(st.integers(0, queues - 1))
        rport = data.draw(st.sampled_from([dport, (dport + 1) % 65536]))
        try:
            if i % 2:
                c.add_rule(data.draw(st.sampled_from(["tcp", "udp"])), rport, q)
            else:
                c.add_rule(proto, rport, q, src=src, dst=dst, sport=data.draw(st.sampled_from([sport, 1])))
        except ValueError:
            pass  # a duplicate
    make = ipv6_frame if v6 else ipv4_frame
    frame = make(src, dst, sport, dport, proto=6 if proto == "tcp" else 17)
    guest = rss.Classifier(json.loads(json.dumps(c.settings())))
    assert guest.queue(src, dst, sport, dport, proto) == c.classify(frame)
    assert guest.queue_for_connection(dst, dport, src, sport, proto) == c.classify(frame)


def test_guest_cli_reads_the_file(tmp_path, capsys):
    c = PortClassifier(2)
    c.add_rule("tcp", 5001, 1)
    f = tmp_path / "classifier.json"
    f.write_text(json.dumps(c.settings()))
    assert rss.main(["10.10.0.1", "10.10.0.2", "40000", "5001", "--file", str(f)]) == 0
    assert capsys.readouterr().out.strip() == "1"
    rss.main(["10.10.0.1", "10.10.0.2", "40000", "5201", "--proto", "udp", "--file", str(f)])
    assert int(capsys.readouterr().out) == c.classify(ipv4_frame("10.10.0.1", "10.10.0.2", 40000, 5201, proto=17))
