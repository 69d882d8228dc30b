"""The client side of the control socket (vhea.ctl) through `vhea`: rule, rss, coalesce, link and rate against a
running back-end, their output and their one-line errors (the requests themselves: test_vhea_control.py)."""

from __future__ import annotations

import json

from vhea_helpers import running_server

from vhea.cli import main


def vhea(capsys, sockdir, *args) -> tuple[int, str, str]:
    argv = list(args)
    argv[2:2] = ["--socket-dir", sockdir]  # after "rule add" / "rss show"
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_rule_and_rss(sockdir, capsys):
    with running_server(sockdir, ["a", "b"], queue_pairs=2):
        code, out, _ = vhea(capsys, sockdir, "rule", "add", "--port", "a", "--proto", "tcp", "--dport", "5001",
                            "--queue", "1")
        assert code == 0 and "rule 1 added on port a" in out
        code, out, _ = vhea(capsys, sockdir, "rule", "add", "--port", "a", "--proto", "udp", "--src", "10.0.0.1",
                            "--dst", "10.0.0.2", "--sport", "7", "--dport", "9", "--queue", "0")
        assert code == 0
        code, out, _ = vhea(capsys, sockdir, "rule", "list")
        assert "tcp dport 5001" in out and "udp 10.0.0.1:7 -> 10.0.0.2:9" in out
        code, out, _ = vhea(capsys, sockdir, "rule", "list", "--port", "a", "--json")
        assert [r["id"] for r in json.loads(out)["rules"]["a"]] == [1, 2]
        code, out, _ = vhea(capsys, sockdir, "rule", "del", "--port", "a", "--id", "2")
        assert code == 0 and "rule 2 deleted" in out
        code, out, err = vhea(capsys, sockdir, "rule", "del", "--port", "a", "--id", "2")
        assert code == 2 and "no rule with id 2" in err
        code, out, err = vhea(capsys, sockdir, "rule", "add", "--port", "q", "--proto", "tcp", "--dport", "1",
                              "--queue", "0")
        assert code == 2 and "unknown port 'q'" in err
        code, out, err = vhea(capsys, sockdir, "rule", "add", "--port", "a", "--proto", "tcp", "--dport", "1",
                              "--queue", "4")
        assert code == 2 and "queue 4 is beyond this port's 2 queue pair(s)" in err

        code, out, _ = vhea(capsys, sockdir, "rss", "show", "--port", "a")
        assert code == 0 and "6d5a56da" in out and "128 entries" in out and "tcp dport 5001" in out
        code, out, _ = vhea(capsys, sockdir, "rss", "set", "--port", "a", "--hash-types", "ipv4,tcp4",
                            "--reta", "1,0,1,0")
        assert code == 0 and "ipv4, tcp4" in out
        code, out, _ = vhea(capsys, sockdir, "rss", "show", "--port", "a", "--json")
        s = json.loads(out)
        assert s["reta"] == [1, 0, 1, 0] and s["hash_types"] == ["ipv4", "tcp4"]
        code, out, _ = vhea(capsys, sockdir, "rss", "set", "--port", "a", "--queues", "1")
        assert code == 0
        code, out, err = vhea(capsys, sockdir, "rss", "set", "--port", "a", "--key", "abcd")
        assert code == 2 and "must be 40 bytes" in err
        code, out, err = vhea(capsys, sockdir, "rss", "set", "--port", "a", "--reta", "0,x")
        assert code == 2 and "comma-separated integers" in err
        code, out, err = vhea(capsys, sockdir, "rss", "set", "--port", "a")
        assert code == 2 and "at least one of" in err
        code, out, err = vhea(capsys, sockdir, "rss", "set", "--port", "a", "--queues", "3")
        assert code == 2 and "queues must be 1..2" in err


def test_cli_coalesce_and_link(sockdir, capsys):
    with running_server(sockdir, ["a"], queue_pairs=2) as server:
        assert main(["coalesce", "set", "--socket-dir", sockdir, "--port", "a", "--queue", "2", "--max-frames", "16",
                     "--max-usecs", "100"]) == 0
        assert main(["coalesce", "show", "--socket-dir", sockdir, "--port", "a"]) == 0
        out = capsys.readouterr().out
        assert "  2 (rx)         16       100" in out
        assert main(["coalesce", "set", "--socket-dir", sockdir, "--port", "a", "--max-frames", "16",
                     "--max-usecs", "0"]) == 2
        assert "needs max_usecs" in capsys.readouterr().err
        assert main(["link", "down", "--socket-dir", sockdir, "--port", "a"]) == 0
        assert "port a: link down" in capsys.readouterr().out
        assert server.ports["a"].link_up is False and server.ports["a"].link_emulated is False


def test_cli_rate(sockdir, capsys):
    with running_server(sockdir, ["a"]) as server:
        assert main(["rate", "set", "--socket-dir", sockdir, "--port", "a", "--gbps", "10"]) == 0
        assert "port a: tx pacing 10 Gb/s, burst 1250000 bytes" in capsys.readouterr().out
        assert server.ports["a"].pacer.rate_bps == 10**10
        assert main(["rate", "set", "--socket-dir", sockdir, "--port", "a", "--off"]) == 0
        assert "tx pacing off" in capsys.readouterr().out
        assert main(["rate", "set", "--socket-dir", sockdir, "--port", "a"]) == 2
