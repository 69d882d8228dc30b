"""The dispatcher's polling policy (polling.py), driven with a fake clock: when it spins, naps or sleeps, and how
its poll window and nap length adapt."""

import pytest

from isostack.dispatcher.polling import NAP_HIGH, NAP_LOW, NAP_MIN_S, PollingPolicy


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def test_spins_for_the_poll_window_then_sleeps(clock):
    policy = PollingPolicy(busy_poll_us=1000, clock=clock)
    assert policy.poll_window_s == 0.001 and policy.poll_us == 1000
    policy.worked()
    clock.advance(0.0009)
    assert not policy.should_sleep()  # still within the window: spin
    clock.advance(0.0001)
    assert policy.should_sleep()
    policy.worked()
    assert not policy.should_sleep()  # work restarts the window


def test_never_sleeps_with_busy_poll_minus_one(clock):
    policy = PollingPolicy(busy_poll_us=-1, clock=clock)
    clock.advance(3600)
    assert not policy.should_sleep()


def test_zero_window_sleeps_at_once(clock):
    policy = PollingPolicy(busy_poll_us=0, clock=clock)
    assert policy.should_sleep()


def test_window_grows_after_short_sleeps_and_shrinks_to_zero_after_long_ones(clock):
    policy = PollingPolicy(busy_poll_us=1000, clock=clock)
    for expected_us in (500, 250, 125, 62, 31):  # long sleeps: polling would only have burnt the CPU
        policy.sleep_starts()
        clock.advance(0.5)
        policy.slept()
        assert policy.poll_us == expected_us
    policy.sleep_starts()
    clock.advance(0.5)
    policy.slept()
    assert policy.poll_window_s == 0.0  # under NAP_MIN_S: no polling at all
    policy.sleep_starts()
    clock.advance(0.0001)  # work came back soon after the sleep: polling longer would have caught it
    policy.slept()
    assert policy.poll_window_s == NAP_MIN_S
    for _ in range(10):
        policy.sleep_starts()
        clock.advance(0.0001)
        policy.slept()
    assert policy.poll_window_s == 0.001  # capped at --busy-poll-us
    assert policy.idle_since == clock.now  # the window starts after the sleep


def test_fixed_poll_window_does_not_adapt(clock):
    policy = PollingPolicy(busy_poll_us=1000, adaptive=False, clock=clock)
    policy.sleep_starts()
    clock.advance(5)
    policy.slept()
    assert policy.poll_window_s == 0.001 and policy.idle_since == clock.now


def test_naps_only_between_drains_of_streaming_rings(clock):
    policy = PollingPolicy(nap_max_us=1000, clock=clock)
    assert policy.should_nap(latency=False, fill=0.3)
    assert not policy.should_nap(latency=True, fill=0.3)  # someone waits: no nap
    assert not policy.should_nap(latency=False, fill=0.0)  # no tx ring drained
    assert not PollingPolicy(nap_max_us=0, clock=clock).should_nap(latency=False, fill=0.3)  # naps off


def test_nap_adapts_to_how_full_the_rings_were(clock):
    policy = PollingPolicy(nap_max_us=1000, clock=clock)
    assert policy.nap_s == pytest.approx(4 * NAP_MIN_S)
    policy.napped(fill=NAP_LOW / 2, latency=False)  # far from full: nap longer
    assert policy.nap_s == pytest.approx(8 * NAP_MIN_S)
    policy.napped(fill=(NAP_LOW + NAP_HIGH) / 2, latency=False)  # in between: unchanged
    assert policy.nap_s == pytest.approx(8 * NAP_MIN_S)
    policy.napped(fill=NAP_HIGH + 0.1, latency=False)  # filling up: shorter
    assert policy.nap_s == pytest.approx(4 * NAP_MIN_S)
    policy.napped(fill=0.0, latency=True)  # an application waited: shorter
    assert policy.nap_s == pytest.approx(2 * NAP_MIN_S)
    for _ in range(10):
        policy.napped(fill=1.0, latency=True)
    assert policy.nap_s == NAP_MIN_S  # floor
    for _ in range(20):
        policy.napped(fill=0.0, latency=False)
    assert policy.nap_s == 0.001 and policy.nap_us == 1000  # ceiling: --nap-max-us
    clock.advance(1)
    policy.napped(fill=0.0, latency=False)
    assert policy.idle_since == clock.now  # a nap counts as work for the poll window


def test_nap_never_exceeds_a_small_nap_max(clock):
    assert PollingPolicy(nap_max_us=10, clock=clock).nap_s == 10e-6
    assert PollingPolicy(nap_max_us=-5, clock=clock).nap_s == 0.0


def test_sleep_timeout():
    def timeout(**what):
        return PollingPolicy.sleep_timeout(**{"commands_pending": False, "nap_s": 0.0, "tx_active": False,
                                              "polled_work": False, "sleep_ms": 100, **what})

    assert timeout() == 0.1  # idle: the longest sleep
    assert timeout(commands_pending=True, nap_s=0.0005) == 0.0  # a command was posted meanwhile
    assert timeout(nap_s=0.0005, tx_active=True) == 0.0005
    assert timeout(tx_active=True, polled_work=True) == 0.0  # tx rings are still drained
    assert timeout(polled_work=True) == 0.001  # rx credits and close linger are polled, not signalled


def test_the_wait_nap_adapts_on_its_own_and_leaves_the_coalescing_nap_alone(clock):
    """Waiting for readers or for EPOLLOUT has its own nap: an event that ends it halves it, full rx rings double
    it, and neither moves the nap between tx drains."""
    policy = PollingPolicy(nap_max_us=1000, clock=clock)
    policy.napped(fill=NAP_LOW / 2, latency=False)
    coalescing = policy.nap_s
    for _ in range(5):
        policy.waited(fill=0.0, latency=True)  # EPOLLOUT ended it
    assert policy.wait_s == NAP_MIN_S and policy.nap_s == coalescing
    for _ in range(20):
        policy.waited(fill=0.0, latency=False)  # the rx rings stayed full
    assert policy.wait_s == 0.001 and policy.nap_s == coalescing
    clock.advance(1)
    policy.waited(fill=1 / 4, latency=False)  # a reader took a quarter: unchanged, and it counts as work
    assert policy.wait_s == 0.001 and policy.idle_since == clock.now
