"""vhea, the virtual HEA: a vhost-user virtio-net back-end in pure Python with a learning switch.

Layers, each its own module (after rust-vmm's vhost crates):
  protocol   wire format: header, payload dataclasses, sans-I/O framing parser
  connection Unix socket + SCM_RIGHTS fds, non-blocking
  handler    one method per request, a table that says which requests carry fds
  net        virtio-net semantics: virtio_net_hdr, tx gather, rx scatter with MRG_RXBUF
  vring      split virtqueue state and a bounds-checked avail -> chain -> used walk
  memory     SET_MEM_TABLE regions, mmapped, guest-physical and front-end-virtual translation
  switch     MAC learning with ageing, flooding
  server     the single-threaded selectors loop, ports, counters, control socket
  cli        `vhea serve` and `vhea stats`
  frontend   a vhost-user front-end for tests (no VM); testpmd: DPDK testpmd as a real peer
"""
