"""isostack/frontend/stack.py: the wait policy (a waiting thread sleeps on its CPU's doorbell, which the dispatcher
rings only for sleepers), through a real isostackd subprocess."""

import threading
import time

from test_isostack_frontend import accept_in_thread, stack  # noqa: F401  (fixture)


def test_doorbell_rung_only_for_sleepers(stack, listener):  # noqa: F811
    t, box = accept_in_thread(listener)
    s = stack.create_connection(listener.getsockname(), timeout=5)
    t.join(5)
    before = stack.stats()

    def later(i):
        time.sleep(0.3)
        box["c"].sendall(b"wake%d" % i)

    # A sleeping thread also wakes every MAX_SLEEP_MS on its own; if that wake-up finds the data first, the
    # dispatcher rightly saves the doorbell (as in test_isostack_notify).  So sleep a few times: at least one
    # of them must be rung.
    for i in range(5):
        threading.Thread(target=later, args=(i,), daemon=True).start()
        assert s.recv(10) == b"wake%d" % i  # slept on the doorbell
        if stack.stats()["doorbells_rung"] > before["doorbells_rung"]:
            break
    assert stack.stats()["doorbells_rung"] > before["doorbells_rung"]
    # A thread that woke on its own timeout may have been rung as well, a moment after it returned (the
    # dispatcher saw its sleep announcement): let such a late ring land before taking the baseline, so only
    # a ring for the data below counts against it.
    time.sleep(0.3)
    rung = stack.stats()["doorbells_rung"]
    # Data that arrives while no thread of ours waits: the dispatcher posts the event and saves the doorbell.
    box["c"].sendall(b"quiet")
    deadline = time.monotonic() + 5
    while stack.stats()["doorbells_saved"] == before["doorbells_saved"] and time.monotonic() < deadline:
        time.sleep(0.05)  # not waiting on the doorbell: nobody announced sleep
    after = stack.stats()
    assert after["doorbells_saved"] > before["doorbells_saved"]
    assert after["doorbells_rung"] == rung
    assert s.recv(10) == b"quiet"
    fd = s.fileno()
    assert fd >= 0
    s.close()
    box["c"].close()
