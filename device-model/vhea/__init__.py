"""vhea, the virtual HEA: a vhost-user virtio-net back-end in Python (a C inner loop optional) with a learning switch.

Layers, each its own module (after rust-vmm's vhost crates):
  protocol   wire format: header, payload dataclasses, sans-I/O framing parser
  connection Unix socket + SCM_RIGHTS fds, non-blocking
  handler    one method per request, a table that says which requests carry fds; session: its state
  vhost_backend  the interface the handler drives a device through (after rust-vmm's VhostUserBackend)
  net        virtio-net semantics: virtio_net_hdr, tx gather, rx scatter with MRG_RXBUF
  net_backend    VirtioNet configured by vhost-user requests (implements vhost_backend)
  datapath   the native datapath's calls on a vring view, with named results
  vring      split virtqueue state and a bounds-checked avail -> chain -> used walk
  memory     SET_MEM_TABLE regions, mmapped, guest-physical and front-end-virtual translation
  native     the native datapath: _datapath.c (tx batch walk + copy + used ring, rx batch write), built with
             gcc at import; vring/net stay the reference and the fallback (`vhea serve --datapath`)
  switch     MAC learning with ageing, flooding
  server     the single-threaded selectors loop, ports, counters, control socket
  control    the requests the control socket answers (rules, RSS, coalescing, link, pacing, pause, ports)
  ctl        `vhea stats`, `vhea rule|rss|port|...`: the client side of the control socket
  cli        `vhea serve`, `vhea bench` and the argparse entry `vhea`
  bench      `vhea bench` (bench_dpdk, bench_python, bench_report; microbench: the datapath alone in one process)
  errors     ConfigError, UsageError and the limits every layer shares (port names, socket path length)
  frontend   a vhost-user front-end for tests (no VM); testpmd: DPDK testpmd as a real peer
"""
