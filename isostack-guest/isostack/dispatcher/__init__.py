"""isostackd: the IsoStack back-end dispatcher, one process pinned to a dedicated CPU.

It owns every kernel socket of the attached applications (non-blocking) and serves their shared-memory queues
and rings in one loop.  One concept per module:
  state.py          the records the parts share: a socket slot, an attached application, the loop's tables
  ratelimit.py      the per-application rate limit on warnings (a logging filter)
  kernel.py         kernel glue: attach socket, epoll interest of kernel sockets, busy-poll settings, reuseport,
                    eventfd writes that never block
  applications.py   application attach, readiness registrations, release of a crashed application
  commands.py       validating and executing the entries of the command queues
  datapath.py       tx drain and rx fill between the rings and the kernel sockets
  notifications.py  per-CPU notification rings, their doorbells, readiness eventfds
  polling.py        the pure spin/nap/sleep policy
  watchdog.py       stranded tx rings
  loop.py           the Dispatcher: one loop over all of the above
  cli.py            the isostackd command line (also `python3 -m isostack.dispatcher`)

Instances: `--instance K --cpu C --queues q,..` runs one of several dispatchers, each on its own core and
owning the NIC queue pairs whose IRQs/RPS/XPS it places on that core (attach socket: attach.instance_path).
A front-end attaches to every instance; each socket lives in exactly one instance's shared memory, which is
how the back-end tells the front-end who owns it (C_OWNER in the control page repeats it, C_RX_CPU says
which CPU the kernel last received the connection's packets on).  Passive opens are steered to the instance
owning the SYN's rx queue by a reuseport BPF program (kernel.reuseport_program); for active opens the
front-end binds a source port whose Toeplitz hash maps to one of the instance's queues (rss.py).

Producers are untrusted: every entry and every index an application controls is validated; a bad one fails
that socket (state ST_ERROR + errno, notification EV_ERR) and nothing else.  An application's sockets and
memory are released as soon as its attach connection closes.  Applications are untrusted too (the attach
socket is 0666): each is bounded (state.Limits), served in turn with a command budget per pass, isolated from
the others by its own uid on its kernel sockets, and closed alone if anything unexpected happens on its path
(docs/isostack.md, "Hostile applications and limits").
"""
