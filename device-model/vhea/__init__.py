"""vhea, the virtual HEA: a vhost-user virtio-net back-end in Python (a C inner loop optional) with a learning switch.

Modules by layer, bottom up; a module imports only from layers below it (pyproject.toml's import contracts
check it; docs/architecture.md explains it):
  wire       protocol (header, payload dataclasses, sans-I/O framing parser); errors (ConfigError, UsageError,
             the limits every layer shares: port names, socket path length)
  transport  session (the session state), vhost_backend (the device interface, after rust-vmm's
             VhostUserBackend); handler (one method per request, checks before the device sees anything),
             connection (Unix socket + SCM_RIGHTS fds, non-blocking)
  virtio     memory (SET_MEM_TABLE regions, mmapped, address translation); vring (split virtqueue state, a
             bounds-checked avail -> chain -> used walk, a public ring view)
  device     datapath (the C datapath's calls, named results), offload (checksum/TSO), native (loads
             _datapath.c, built when the project is installed, never at import); net (virtio-net semantics);
             net_backend (VirtioNet configured by vhost-user requests)
  fabric     switch (MAC learning), toeplitz; classifier (rules, RSS), pacing, coalesce, forwarding, pause
             (flow control): pure decisions, time passed in
  server     the package vhea.server: selectors loop, ports, sessions, tx service, delivery, notifications,
             control socket framing
  control    control (the requests the control socket answers) | ctl (the client: `vhea stats|rule|rss|...`)
  tools      bench (`vhea bench`: bench_dpdk, bench_python, bench_report, bench_serve, bench_frames;
             microbench: the datapath alone in one process), frontend (a vhost-user front-end without a VM),
             testpmd (DPDK testpmd as a real peer)
  cli        `vhea`: serve, the control subcommands, bench
"""
