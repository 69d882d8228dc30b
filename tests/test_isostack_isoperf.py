"""isoperf's STREAM client with its data connections on IsoStack: the small isoperf change, tried by patching.

The change proposed for isoperf.py (owned elsewhere): STACKS gets "iso", and the client opens its *data*
connections with isostack.frontend.create_connection when params.stack == "iso".  Here the same is done by
monkeypatching, with payload verification on, against isoperf's own (kernel) server on 127.0.0.1.
"""

import pytest
from test_isoperf import ServerThread
from test_isostack_frontend import start_isostackd

from isostack import isoperf
from isostack.frontend import Stack
from isostack.isoperf import RunParams


@pytest.mark.parametrize("connections,size", [(1, 64), (4, 64), (2, 1448)])
def test_isoperf_stream_over_isostack_verified(tmp_path, monkeypatch, connections, size):
    path = tmp_path / "isostackd.sock"
    daemon = start_isostackd(path)
    stack = Stack(str(path))
    data_conns = []
    kernel_connect = isoperf._connect

    def connect(host, port, timeout):
        if not data_conns and port != "data":  # the first connection is the control one: kernel
            data_conns.append(None)
            return kernel_connect(host, port, timeout)
        s = stack.create_connection((host, port), timeout=timeout)
        data_conns.append(s)
        return s

    monkeypatch.setattr(isoperf, "STACKS", ("legacy", "iso"))
    monkeypatch.setattr(isoperf, "_connect", connect)
    try:
        server = ServerThread()
        params = RunParams(size=size, connections=connections, duration=0.6, warmup=0.2, stack="iso", verify=True)
        r = isoperf.run_client("127.0.0.1", server.port, params)
        assert server.join() == 0
        assert r["errors"] == []
        assert r["verified"] is True
        assert r["server_total_bytes"] == r["client_total_bytes"] > 0
        assert len(data_conns) == connections + 1
        assert r["stack"] == "iso"
    finally:
        stack.close()
        daemon.terminate()
        daemon.wait(5)
