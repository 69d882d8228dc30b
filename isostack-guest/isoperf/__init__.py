"""isoperf: a netperf-style load generator with a JSON-lines control connection, beside the IsoStack runtime.

Stdlib only with ``--stack legacy``: it runs inside the guests as ``python3 -m isoperf`` from an uploaded copy.
``--stack iso`` imports ``isostack.frontend`` (lazily) and needs a running ``isostackd`` (its socket:
ISOSTACK_SOCKET, default /run/isostack/isostackd.sock).

Tests (the client's view):

- ``stream``: the client sends size-byte messages; the figure is what the server received between the marks.
- ``maerts``: the server sends, the client receives (and verifies); the figure is what the client received.
- ``rr``: each connection does request (size) / response (response size, default = size) in lock-step;
  transactions/s and latency percentiles (p50/p90/p99/p99.9/max, µs, every transaction timed with
  perf_counter_ns on the client).
- ``crr``: per transaction connect, request, response, close (the server closes after its response).

Modules, one concept each (imports only downward in this list):
    errors        IsoperfError, the one-line error
    verify        payload verification: verifiable messages and the stream verifier
    cpu           CPU accounting from /proc/stat, the --cpu check
    stats         latency percentiles, mean/stddev over measured intervals
    protocol      the control wire protocol (JSON lines) and the test parameters (RunParams)
    sockets       the data connections of either stack (the only, lazy, import of isostack)
    sendloop      the C send loop (_sendloop.c): build, load, choose
    workers       per-connection threads: the worker base, stream Sender and Receiver
    transactions  rr/crr: one client transaction loop for both, the server's Responder
    server        the server's sessions
    client        the client's session and the result figures
    cli           the `isoperf` command (also `python3 -m isoperf`)
    stackbench    `python3 -m isoperf.stackbench`: IsoStack vs kernel sockets in one process, queue costs
    hostilebench  `python3 -m isoperf.hostilebench`: a good application's throughput alone and beside a hostile one
"""
