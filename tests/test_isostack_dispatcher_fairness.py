"""isostackd's fairness between applications (commands.take_commands): a deficit round-robin in time.

The dispatcher is driven by hand and its clock is the test's, which each command advances by what the test
says it costs: what one pass serves of whom is then exact, not a timing."""

import socket

import pytest

from isostack.dispatcher.commands import MAX_DEBT_PASSES
from isostack.dispatcher.state import Limits
from isostack.frontend import Stack
from isostack.layout import Geometry, Op

GEO = Geometry(max_sockets=4, cmdq_slots=1024, tx_size=4096, rx_size=4096, notif_rings=1)
QUANTUM_US = 50


class Driven:
    """A dispatcher stopped after two applications attached (`hog` with two open sockets, `good` with one); its
    clock is `ns`, which every executed command advances by `cost[app id]` (ns)."""

    def __init__(self, running, hog: Stack, good: Stack):
        self.d = running.dispatcher
        self.hog, self.good = hog, good
        self.hog_id, self.good_id = hog.stats()["app"], good.stats()["app"]
        self.hog_socks = [hog.socket(), hog.socket()]
        self.good_sock = good.socket()
        running.stop()
        self.ns = 0
        self.cost = {self.hog_id: 10_000, self.good_id: 10_000}
        self.executed: list[tuple[int, int]] = []  # (app id, socket slot) of every command executed
        commands = self.d.commands
        commands.clock = lambda: self.ns
        execute = commands._execute

        def costed(slot, command):
            self.executed.append((slot.app.id, slot.index))
            self.ns += self.cost[slot.app.id]
            execute(slot, command)
        commands._execute = costed

    def app(self, app_id: int):
        return next(a for a in self.d.shared.apps.values() if a.id == app_id)

    @staticmethod
    def post(sock, n: int) -> None:
        """n GETSOCKOPTs on the socket's queue, no result waited for (as the hammer does)."""
        for _ in range(n):
            assert sock._command_queue.push(Op.GETSOCKOPT, sock._slot, socket.SOL_SOCKET, socket.SO_ERROR) >= 0
        sock._owner.flag_pending(sock._slot)

    def one_pass(self) -> list[tuple[int, int]]:
        """The (app id, slot) of the commands one poll_once executed."""
        start = len(self.executed)
        self.d.poll_once()
        return self.executed[start:]


@pytest.fixture
def driven(dispatcher_thread):
    running = dispatcher_thread(limits=Limits(app_budget_us=QUANTUM_US))
    hog = Stack(running.path, GEO, name="hog")
    good = Stack(running.path, GEO, name="good")
    try:
        yield Driven(running, hog, good)
    finally:
        good.close()
        hog.close()


def test_each_pass_gives_a_flooding_application_its_time_and_serves_the_other_whole(driven):
    driven.post(driven.hog_socks[0], 500)
    driven.post(driven.good_sock, 3)
    before = driven.d.stats["time_deferred"]
    served = driven.one_pass()
    # 10 us a command, 50 us a pass: 5 of the hog's (not the 64 of its queue budget), all 3 of the good one's
    assert served.count((driven.hog_id, driven.hog_socks[0]._slot)) == 5
    assert served.count((driven.good_id, driven.good_sock._slot)) == 3
    assert driven.d.stats["time_deferred"] == before + 1
    for _ in range(3):  # the hog's pending bit stays set: it goes on, a quantum a pass
        assert driven.one_pass() == [(driven.hog_id, driven.hog_socks[0]._slot)] * 5
    assert driven.d.stats["budget_deferred"] == 0


def test_the_budget_is_time_not_commands(driven):
    driven.post(driven.hog_socks[0], 500)
    driven.post(driven.good_sock, 500)
    driven.cost[driven.hog_id] = 25_000  # a costly command (a kernel call) against a cheap one
    driven.cost[driven.good_id] = 1_000
    counts = {driven.hog_id: 0, driven.good_id: 0}
    for _ in range(4):
        for app_id, _slot in driven.one_pass():
            counts[app_id] += 1
    assert counts == {driven.hog_id: 4 * 2, driven.good_id: 4 * 50}


def test_an_overspent_pass_is_paid_back_in_the_next_ones(driven):
    driven.post(driven.hog_socks[0], 50)
    driven.cost[driven.hog_id] = 120_000  # one command takes 2.4 quanta: 70 us of debt
    assert len(driven.one_pass()) == 1
    assert driven.app(driven.hog_id).command_credit_ns == -70_000
    assert driven.one_pass() == []  # credit -20 us: this pass is skipped, the queue waits
    assert len(driven.one_pass()) == 1  # credit +30 us: one command (which overspends again)
    driven.cost[driven.hog_id] = 10_000_000  # 10 ms (e.g. the dispatcher preempted): the debt is bounded
    while driven.one_pass() == []:
        pass
    assert len(driven.one_pass()) == 0
    skipped = 1
    while driven.one_pass() == []:
        skipped += 1
    assert skipped == MAX_DEBT_PASSES


def test_an_application_whose_queues_ran_empty_keeps_no_credit(driven):
    driven.post(driven.good_sock, 2)
    assert len(driven.one_pass()) == 2
    assert driven.app(driven.good_id).command_credit_ns == 0
    for _ in range(5):  # idle passes give nothing to save up
        driven.one_pass()
    driven.post(driven.good_sock, 500)
    assert len(driven.one_pass()) == 5


def test_a_slow_command_that_empties_the_queue_is_no_debt(driven):
    """A well-behaved application's one command, slow because the dispatcher was preempted in it: nothing waits
    behind it, so nothing is deferred and nothing owed."""
    driven.cost[driven.good_id] = 5_000_000
    before = driven.d.stats["time_deferred"]
    driven.post(driven.good_sock, 1)
    assert len(driven.one_pass()) == 1
    assert driven.app(driven.good_id).command_credit_ns == 0
    driven.post(driven.good_sock, 1)
    assert len(driven.one_pass()) == 1  # served in the very next pass
    assert driven.d.stats["time_deferred"] == before


def test_the_sockets_of_a_flooding_application_take_turns(driven):
    first, second = driven.hog_socks
    driven.post(first, 500)
    driven.post(second, 500)
    served = [slot for _ in range(4) for _app, slot in driven.one_pass()]
    assert served.count(first._slot) == served.count(second._slot) == 10
    assert served[:5] == [first._slot] * 5 and served[5:10] == [second._slot] * 5
