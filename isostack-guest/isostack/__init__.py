"""isostack: the IsoStack runtime that runs inside the guests (stdlib-only Python 3.11 plus two small C parts).

Modules, one concept each:
    layout      shared-memory layout, command entries and their validation (pure, sans-I/O)
    queues      MPSC command queue (Vyukov), notification ring, byte rings; the memory-ordering argument
    native      the C parts: _fastpath (CPython extension) or, as fallback, _atomics (ctypes); membarrier
    attach      the attach handshake between an application and isostackd (unix socket + SCM_RIGHTS)
    dispatcher  isostackd: the back-end on a dedicated CPU
    frontend    the socket-like API applications use (Stack, IsoSocket, socket(), create_connection())
    placement   IRQ affinity / RPS / XPS of the virtio-net queues onto the dispatcher's CPU
    rss         queue prediction from the guest's classifier settings

The tools above the runtime (isoperf, its stack benchmark) are the package isoperf beside this one: isostack
never imports it.
"""
