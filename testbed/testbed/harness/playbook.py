"""Playbooks: YAML experiment descriptions, validated strictly into dataclasses.

Strict because a typo in a benchmark file (``sise: 64``) must not silently run the default: every unknown
key, wrong type or missing required key is an error naming the file, the line and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

PLAYBOOK_VERSION = 1
SUPPORTED_TESTS = ("stream", "maerts", "rr", "crr")  # isoperf's TESTS
TRANSACTION_TESTS = ("rr", "crr")
# Cross-check tools per test (legacy stack only: they use kernel sockets): iperf3 for STREAM throughput,
# sockperf ping-pong (one connection) for RR latency.
CROSSCHECK_TOOLS = {"stream": "iperf3", "rr": "sockperf"}
MAX_INTERVALS = 100  # isoperf's MAX_REPEATS
MAX_INSTANCES = 16  # isostackd --instance 0..15 (isostack.attach.MAX_INSTANCES)
MAX_SO_BUSY_POLL_US = 1_000_000  # SO_BUSY_POLL is an int of microseconds; a second is already absurd
MAX_NAP_MAX_US = 1_000_000  # isostackd --nap-max-us: a coalescing nap of a second would stall every stream
MAX_EPOLL_BUSY_POLL_US = 1_000_000  # the net.core.busy_poll sysctl (microseconds), like SO_BUSY_POLL
MAX_SEED = 2**32 - 1
MAX_INTERVAL_S = 3600.0  # a pause of an hour between cases is a typo, not a cool-down
RUN_ORDERS = ("interleaved", "shuffled", "sequential")  # order.arrange: A B A B, shuffled rounds, A A B B
SUPPORTED_STACKS = ("legacy", "iso")
KNOWN_STACKS = ("legacy", "iso")
PEER = "peer"  # `server: peer` / `client: peer`: the testbed's native peer (testbed.peer), not a guest
# Where the application runs relative to the data NIC's interrupts (pinning.py): `apart` (the default: the NIC's
# interrupts on the last vCPU, the application on vCPU 0), `irq` (the application on the interrupts' vCPU),
# `spread` (the OS default: interrupts spread over all vCPUs, the application where the scheduler puts it).
PLACEMENTS = ("apart", "irq", "spread")
DEFAULT_PLACEMENT = "apart"
# The program a case runs (matrix axis): isoperf, or an unmodified Debian tool for the one test it measures.
PROGRAMS = ("isoperf", "iperf3", "sockperf")
PROGRAM_TESTS = {"iperf3": ("stream",), "sockperf": ("rr",)}
# How an IsoStack end reaches isostackd (matrix axis, stack/server_stack iso only): `python`, the Python
# front-end (isoperf --stack iso); `preload`, the program on kernel-socket calls under isostack-run (the C shim,
# libisostack-preload.so). iperf3 and sockperf have only the second. A case with no IsoStack end: `kernel`.
FRONTENDS = ("python", "preload")
KERNEL_FRONTEND = "kernel"


class PlaybookError(ValueError):
    """A playbook that cannot be run; the message says where and why."""


@dataclass(frozen=True)
class TestSpec:
    """One entry of `tests:`; size/connections/stack may be lists, expanded into cases (a matrix)."""

    __test__ = False  # not a pytest class

    name: str
    test: str
    sizes: tuple[int, ...]
    connections: tuple[int, ...]
    stacks: tuple[str, ...]
    duration: float
    warmup: float
    verify: bool
    repeats: int
    client: str | None
    server: str | None
    port: int
    locks: tuple[bool, ...] = (False,)  # isostackd --uncontended-locks (stack iso only)
    response_size: int | None = None  # rr/crr: isoperf --response-size (None: the request size)
    intervals: int = 1  # isoperf --repeats: measured intervals per run, back to back
    cpu: int | None = None  # isoperf --cpu: the client's worker threads pinned to this vCPU
    sndbuf: int | None = None  # isoperf --sndbuf: SO_SNDBUF of the client's data sockets (None: autotuning)
    crosscheck: bool = False  # legacy stream/rr cases: also run iperf3 / sockperf between the same guests
    instances: tuple[int, ...] = (1,)  # stack iso: isostackd instances on the client guest (matrix axis)
    so_busy_poll_us: int | None = None  # stack iso: isostackd --so-busy-poll-us (None: isostackd's default)
    nap_max_us: int | None = None  # stack iso: isostackd --nap-max-us (None: isostackd's default)
    epoll_busy_poll_us: int | None = None  # stack iso: isostackd --epoll-busy-poll-us (None: isostackd's default)
    instances_line: int = 0  # where `instances` was given (its default's line), for topology errors
    placements: tuple[str, ...] = (DEFAULT_PLACEMENT,)  # application vs NIC interrupts (matrix axis, PLACEMENTS)
    placement_line: int = 0  # where `placement` was given (the test's line when not), for topology errors
    server_stacks: tuple[str, ...] = ("legacy",)  # the server's stack (matrix axis): iso starts isostackd there
    programs: tuple[str, ...] = ("isoperf",)  # the program run at both ends (matrix axis, PROGRAMS)
    frontends: tuple[str, ...] = ("python",)  # how IsoStack ends reach isostackd (matrix axis, FRONTENDS)


@dataclass(frozen=True)
class Case:
    """One isoperf run: a point of a test's matrix, one repeat."""

    spec: TestSpec
    stack: str
    size: int
    connections: int
    repeat: int
    locks: bool = False  # stack iso: isostackd takes the un-contended locks the design removes
    instances: int = 1  # stack iso: isostackd instances, each on its own vCPU with its share of the queues
    placement: str = DEFAULT_PLACEMENT  # where the application runs relative to the NIC's interrupts
    placement_axis: bool = False  # the playbook runs more than one placement: the label names it
    server_stack: str = "legacy"  # the server's stack: "iso" receives and answers through isostackd on its guest
    program: str = "isoperf"  # the program at both ends (PROGRAMS)
    frontend: str = KERNEL_FRONTEND  # the IsoStack ends' front-end (FRONTENDS), `kernel` when there is none

    @property
    def iso_ends(self) -> tuple[str, ...]:
        """The ends ("client", "server") that go through isostackd."""
        return tuple(end for end, s in (("client", self.stack), ("server", self.server_stack)) if s == "iso")

    @property
    def stack_label(self) -> str:
        return stack_label(self.stack, self.locks, self.instances, self.placement if self.placement_axis else None,
                           self.server_stack, self.program, self.frontend)

    @property
    def label(self) -> str:
        return f"{self.spec.name} {self.stack_label} size={self.size} conns={self.connections} #{self.repeat + 1}"


def stack_label(stack: str, locks: bool = False, instances: int = 1, placement: str | None = None,
                server_stack: str = "legacy", program: str = "isoperf", frontend: str | None = None) -> str:
    """"iso", "iso+locks", "iso×2", "iso×2+locks", "legacy@irq" (a placement, when the playbook runs several),
    "legacy→iso" (the server on IsoStack: client's stack → server's), "iso(preload)" (IsoStack through the C
    shim, not the Python front-end), "iperf3 legacy" (a program other than isoperf): the stack column of a case."""
    label = f"{stack}×{instances}" if instances > 1 else stack
    label = f"{label}+locks" if locks else label
    label = f"{label}→{server_stack}" if server_stack != "legacy" else label
    label = f"{label}({frontend})" if frontend == "preload" else label
    label = f"{program} {label}" if program != "isoperf" else label
    return f"{label}@{placement}" if placement else label


@dataclass(frozen=True)
class Playbook:
    path: Path
    name: str
    description: str
    tests: tuple[TestSpec, ...]
    text: str
    order: str = "interleaved"  # how the cases' repeats are laid out in time (order.arrange)
    seed: int | None = None  # shuffled order and bootstrap intervals (None: the run picks one and records it)
    interval_s: float = 0.0  # pause between two cases, so the host settles
    overrides: tuple[str, ...] = ()  # `--set KEY=VALUE` given on the command line (text is then the resolved form)
    source_sha256: str | None = None  # with overrides: the sha256 of the file as written

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def placement_axis(self) -> bool:
        """The playbook runs more than one placement, so a case's label and the report's stack column name it."""
        return len({p for spec in self.tests for p in spec.placements}) > 1

    def cases(self) -> list[Case]:
        out = []
        axis = self.placement_axis
        for spec in self.tests:
            for stack in spec.stacks:
                # The lock ablation and the instances are isostackd's: the legacy stack runs once whatever
                # `locks` and `instances` say.
                locks = spec.locks if stack == "iso" else (False,)
                instances = spec.instances if stack == "iso" else (1,)
                for program, srv, where, n, lock, size, conns in itertools.product(
                        spec.programs, spec.server_stacks, spec.placements, instances, locks, spec.sizes,
                        spec.connections):
                    for frontend in case_frontends(spec, program, stack, srv):
                        out.extend(Case(spec, stack, size, conns, r, lock, n, where, axis, srv, program, frontend)
                                   for r in range(spec.repeats))
        return out


def case_frontends(spec: TestSpec, program: str, stack: str, server_stack: str) -> tuple[str, ...]:
    """The front-ends a point of the matrix runs: `kernel` alone without an IsoStack end (the axis is
    isostackd's, like locks); only `preload` for a program other than isoperf (it has no Python front-end)."""
    if "iso" not in (stack, server_stack):
        return (KERNEL_FRONTEND,)
    return tuple(f for f in spec.frontends if program == "isoperf" or f == "preload")


# ---------------------------------------------------------------- YAML with line numbers


class _BadKey(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _Mapping(dict):
    """A dict that remembers the line of each key (1-based) and of itself."""

    line: int = 0
    key_lines: dict


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:  # `? [a]`, `{[a]: 1}`, `? !!set {a}`: YAML allows them, a dict cannot hold them
            raise _BadKey(line, f"a key must be a plain value, not {_type_name(key)}") from None
        if key in mapping:
            raise _BadKey(line, f"duplicate key {key!r} (first at line {mapping.key_lines[key]})")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ---------------------------------------------------------------- validation

_TOP_KEYS = {"version": True, "name": True, "description": False, "order": False, "seed": False,
             "interval_s": False, "defaults": False, "tests": True}
# key -> required (after defaults are applied)
_TEST_KEYS = {
    "name": True,
    "test": True,
    "size": True,
    "connections": False,
    "stack": False,
    "duration": True,
    "warmup": False,
    "verify": False,
    "repeats": False,
    "client": False,
    "server": False,
    "port": False,
    "locks": False,
    "response_size": False,
    "intervals": False,
    "cpu": False,
    "sndbuf": False,
    "crosscheck": False,
    "instances": False,
    "so_busy_poll_us": False,
    "nap_max_us": False,
    "epoll_busy_poll_us": False,
    "placement": False,
    "server_stack": False,
    "program": False,
    "frontend": False,
}
_DEFAULTS_KEYS = {k: False for k in _TEST_KEYS if k != "name"}


class _Checker:
    """Validation helpers that know the file name, so every message can say where."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, line: int | None, where: str, message: str) -> PlaybookError:
        # a str line: the value came from the command line (overrides.py: "--set duration=5")
        loc = f"{self.path} ({line})" if isinstance(line, str) else f"{self.path}:{line}" if line else str(self.path)
        return PlaybookError(f"{loc}: {where}: {message}" if where else f"{loc}: {message}")

    def mapping(self, value, where: str, line: int | None) -> _Mapping:
        if not isinstance(value, _Mapping):
            raise self.fail(line, where, f"expected a mapping, got {_type_name(value)}")
        return value

    def keys(self, m: _Mapping, allowed: dict[str, bool], where: str) -> None:
        for key in m:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), list(allowed), n=1)
                did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
                raise self.fail(
                    m.key_lines[key],
                    where,
                    f"unknown key {key!r} (allowed: {', '.join(allowed)}){did_you_mean}",
                )
        for key, required in allowed.items():
            if required and key not in m:
                raise self.fail(m.line, where, f"missing required key {key!r}")


def _type_name(value) -> str:
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        _Mapping: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def load_playbook(path: str | Path) -> Playbook:
    """Read and validate a playbook file; raises PlaybookError with file:line for every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PlaybookError(f"{path}: cannot read playbook: {e.strerror or e}") from None
    return parse_playbook(text, path)


def parse_playbook(text: str, path: str | Path = "<playbook>") -> Playbook:
    path = Path(path)
    return validate(load_yaml(text, path), text, path)


def load_yaml(text: str, path: Path) -> _Mapping:
    """The playbook's YAML as mappings that know their lines (not yet validated); overrides.py edits it."""
    check = _Checker(path)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _BadKey as e:
        raise check.fail(e.line, "", str(e)) from None
    except RecursionError:  # `[[[[...`: the composer recurses once per level
        raise check.fail(None, "", "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(e, "problem", None) or str(e)
        raise check.fail(line, "", f"not valid YAML: {problem}") from None
    if data is None:
        raise check.fail(None, "", "the playbook is empty")
    return check.mapping(data, "top level", 1)


def validate(top: _Mapping, text: str, path: Path) -> Playbook:
    """Check the loaded playbook strictly; `text` is what run.json records (the file, or its resolved form)."""
    check = _Checker(path)
    check.keys(top, _TOP_KEYS, "top level")

    version = top["version"]
    if version != PLAYBOOK_VERSION or isinstance(version, bool):
        raise check.fail(top.key_lines["version"], "version", f"must be {PLAYBOOK_VERSION}, got {version!r}")
    name = _string(check, top, "name", "top level")
    description = _string(check, top, "description", "top level") if "description" in top else ""
    order, seed, interval_s = _run_order(check, top)

    defaults = _Mapping()
    defaults.key_lines = {}
    if "defaults" in top:
        defaults = check.mapping(top["defaults"], "defaults", top.key_lines["defaults"])
        check.keys(defaults, _DEFAULTS_KEYS, "defaults")

    tests_raw = top["tests"]
    if not isinstance(tests_raw, list) or not tests_raw:
        got = "an empty list" if tests_raw == [] else _type_name(tests_raw)
        raise check.fail(top.key_lines["tests"], "tests", f"expected a non-empty list, got {got}")
    tests: list[TestSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(tests_raw):
        where = f"tests[{i}]"
        entry = check.mapping(raw, where, top.key_lines["tests"])
        check.keys(entry, {k: False for k in _TEST_KEYS}, where)
        merged = _merge(defaults, entry)
        for key, required in _TEST_KEYS.items():
            if required and key not in merged:
                raise check.fail(entry.line, where, f"missing required key {key!r} (not in defaults either)")
        spec = _test_spec(check, merged, where)
        if spec.name in seen:
            raise check.fail(merged.key_lines["name"], where, f"duplicate test name {spec.name!r}")
        seen[spec.name] = i
        tests.append(spec)
    return Playbook(path=path, name=name, description=description, tests=tuple(tests), text=text, order=order,
                    seed=seed, interval_s=interval_s)


def _run_order(check: _Checker, top: _Mapping) -> tuple[str, int | None, float]:
    """The top level's `order`, `seed` and `interval_s` (how the cases are laid out in time)."""
    order = _string(check, top, "order", "top level") if "order" in top else "interleaved"
    if order not in RUN_ORDERS:
        raise check.fail(top.key_lines["order"], "order", f"must be one of {', '.join(RUN_ORDERS)}, got {order!r}")
    seed = None
    if "seed" in top:
        (seed,) = _list_of(check, top, "seed", "top level", int, allow_list=False)
        _range(check, top, "seed", "top level", (seed,), 0, MAX_SEED)
    interval_s = _number(check, top, "interval_s", "top level", default=0.0)
    if not 0 <= interval_s <= MAX_INTERVAL_S:
        raise check.fail(top.key_lines["interval_s"], "top level",
                         f"'interval_s' must be between 0 and {MAX_INTERVAL_S:.0f} seconds, got {interval_s}")
    return order, seed, interval_s


def _merge(defaults: _Mapping, entry: _Mapping) -> _Mapping:
    merged = _Mapping({**defaults, **entry})
    merged.line = entry.line
    merged.key_lines = {**defaults.key_lines, **entry.key_lines}
    return merged


def _test_spec(check: _Checker, m: _Mapping, where: str) -> TestSpec:
    name = _string(check, m, "name", where)
    test = _string(check, m, "test", where)
    if test not in SUPPORTED_TESTS:
        raise check.fail(
            m.key_lines["test"], where, f"test {test!r} is not supported (supported: {', '.join(SUPPORTED_TESTS)})"
        )
    stacks = _list_of(check, m, "stack", where, str, default=("legacy",))
    for s in stacks:
        if s not in KNOWN_STACKS:
            raise check.fail(
                m.key_lines["stack"], where, f"unknown stack {s!r} (choose from {', '.join(KNOWN_STACKS)})"
            )
        if s not in SUPPORTED_STACKS:
            raise check.fail(m.key_lines["stack"], where, f"stack {s!r} is not implemented yet")
    sizes = _list_of(check, m, "size", where, int)
    _range(check, m, "size", where, sizes, 1, 1 << 20)
    conns = _list_of(check, m, "connections", where, int, default=(1,))
    _range(check, m, "connections", where, conns, 1, 256)
    duration = _number(check, m, "duration", where)
    if duration <= 0:
        raise check.fail(m.key_lines["duration"], where, f"duration must be > 0 seconds, got {duration}")
    warmup = _number(check, m, "warmup", where, default=1.0)
    if warmup < 0:
        raise check.fail(m.key_lines["warmup"], where, f"warmup must be >= 0 seconds, got {warmup}")
    verify = m.get("verify", False)
    if not isinstance(verify, bool):
        raise check.fail(m.key_lines["verify"], where, f"'verify' must be true or false, got {_type_name(verify)}")
    if verify and min(sizes) < 13:
        raise check.fail(m.key_lines["size"], where, "verify needs size >= 13 (sequence number + crc32)")
    (repeats,) = _list_of(check, m, "repeats", where, int, default=(1,), allow_list=False)
    _range(check, m, "repeats", where, (repeats,), 1, 1000)
    (port,) = _list_of(check, m, "port", where, int, default=(5701,), allow_list=False)
    _range(check, m, "port", where, (port,), 1, 65535)
    locks = _bools(check, m, "locks", where)
    if True in locks and "iso" not in stacks:
        raise check.fail(m.key_lines["locks"], where, "'locks: true' is an isostackd option: it needs stack iso")
    response_size = None
    if "response_size" in m:
        if test not in TRANSACTION_TESTS:
            raise check.fail(m.key_lines["response_size"], where,
                             f"'response_size' applies to tests rr and crr, not {test!r}")
        (response_size,) = _list_of(check, m, "response_size", where, int, allow_list=False)
        _range(check, m, "response_size", where, (response_size,), 13 if verify else 1, 1 << 20)
    (intervals,) = _list_of(check, m, "intervals", where, int, default=(1,), allow_list=False)
    _range(check, m, "intervals", where, (intervals,), 1, MAX_INTERVALS)
    cpu = None
    if "cpu" in m:
        (cpu,) = _list_of(check, m, "cpu", where, int, allow_list=False)
        _range(check, m, "cpu", where, (cpu,), 0, 1023)
    sndbuf = None
    if "sndbuf" in m:
        (sndbuf,) = _list_of(check, m, "sndbuf", where, int, allow_list=False)
        _range(check, m, "sndbuf", where, (sndbuf,), 1024, 1 << 30)
    crosscheck = m.get("crosscheck", False)
    if not isinstance(crosscheck, bool):
        raise check.fail(
            m.key_lines["crosscheck"], where, f"'crosscheck' must be true or false, got {_type_name(crosscheck)}"
        )
    if crosscheck:
        if test not in CROSSCHECK_TOOLS:
            tests = " or ".join(CROSSCHECK_TOOLS)
            raise check.fail(m.key_lines["crosscheck"], where,
                             f"'crosscheck' needs test {tests} (iperf3 / sockperf), not {test!r}")
        if "legacy" not in stacks:
            raise check.fail(m.key_lines["crosscheck"], where,
                             "'crosscheck' compares the legacy stack with iperf3/sockperf: it needs stack legacy")
    instances = _list_of(check, m, "instances", where, int, default=(1,))
    _range(check, m, "instances", where, instances, 1, MAX_INSTANCES)
    if instances != (1,) and "iso" not in stacks:
        raise check.fail(m.key_lines["instances"], where,
                         "'instances' is the number of isostackd instances: it needs stack iso")
    so_busy_poll_us = _isostackd_int(check, m, "so_busy_poll_us", where, stacks, 0, MAX_SO_BUSY_POLL_US,
                                     "SO_BUSY_POLL on its sockets")
    nap_max_us = _isostackd_int(check, m, "nap_max_us", where, stacks, 0, MAX_NAP_MAX_US,
                                "the longest coalescing nap between drains of its tx rings")
    # -1 is isostackd's own "leave net.core.busy_poll as it is" (its default, also what leaving the key out does)
    epoll_busy_poll_us = _isostackd_int(check, m, "epoll_busy_poll_us", where, stacks, -1, MAX_EPOLL_BUSY_POLL_US,
                                        "the net.core.busy_poll sysctl while it runs")
    placements = _placements(check, m, where, stacks, instances)
    client = _string(check, m, "client", where) if "client" in m else None
    server = _string(check, m, "server", where) if "server" in m else None
    server_stacks = _list_of(check, m, "server_stack", where, str, default=("legacy",))
    for s in server_stacks:
        if s not in SUPPORTED_STACKS:
            raise check.fail(m.key_lines["server_stack"], where,
                             f"unknown server_stack {s!r} (choose from {', '.join(SUPPORTED_STACKS)})")
    if "iso" in server_stacks and server == PEER:
        raise check.fail(m.key_lines["server_stack"], where, "the peer runs isoperf natively on kernel sockets:"
                         " server_stack iso needs its server on a guest (e.g. client: peer, server: iso-a)")
    if "iso" in server_stacks and crosscheck:
        raise check.fail(m.key_lines["server_stack"], where, "'crosscheck' runs iperf3/sockperf on kernel sockets"
                         " at both ends: leave server_stack legacy")
    if client is not None and client == server:
        raise check.fail(m.key_lines["server"], where, f"client and server are the same guest {client!r}")
    if client == PEER and "iso" in stacks:
        raise check.fail(m.key_lines["client"], where, "the peer runs isoperf natively on kernel sockets: stack iso "
                         "needs its client on a guest (for the guest receiving, put the peer as server of maerts)")
    if crosscheck and PEER in (client, server):
        raise check.fail(m.key_lines["crosscheck"], where, "'crosscheck' runs iperf3/sockperf on two guests, not on"
                         " the peer")
    programs, frontends = _programs(check, m, where, test, stacks, server_stacks, instances, sizes, conns)
    if programs != ("isoperf",) and PEER in (client, server):
        raise check.fail(m.key_lines["program"], where, "the peer runs isoperf only: a test with 'program' runs"
                         " between two guests")
    return TestSpec(
        name=name,
        test=test,
        sizes=sizes,
        connections=conns,
        stacks=stacks,
        duration=duration,
        warmup=warmup,
        verify=verify,
        repeats=repeats,
        client=client,
        server=server,
        port=port,
        locks=locks,
        response_size=response_size,
        intervals=intervals,
        cpu=cpu,
        sndbuf=sndbuf,
        crosscheck=crosscheck,
        instances=instances,
        so_busy_poll_us=so_busy_poll_us,
        nap_max_us=nap_max_us,
        epoll_busy_poll_us=epoll_busy_poll_us,
        instances_line=m.key_lines.get("instances", m.line),
        placements=placements,
        placement_line=m.key_lines.get("placement", m.line),
        server_stacks=server_stacks,
        programs=programs,
        frontends=frontends,
    )


def _choice(check: _Checker, m: _Mapping, key: str, where: str, allowed: tuple[str, ...],
            default: tuple[str, ...]) -> tuple[str, ...]:
    """A string or list of strings out of `allowed`; an unknown one is an error with a did-you-mean."""
    values = _list_of(check, m, key, where, str, default=default)
    for v in values:
        if v not in allowed:
            hint = difflib.get_close_matches(v, allowed, n=1)
            raise check.fail(m.key_lines[key], where, f"unknown {key} {v!r} (choose from {', '.join(allowed)})"
                             + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return values


def _programs(check: _Checker, m: _Mapping, where: str, test: str, stacks: tuple[str, ...],
              server_stacks: tuple[str, ...], instances: tuple[int, ...], sizes: tuple[int, ...],
              conns: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The `program` and `frontend` axes, checked against what the programs and the shim can run."""
    programs = _choice(check, m, "program", where, PROGRAMS, ("isoperf",))
    frontends = _choice(check, m, "frontend", where, FRONTENDS, ("python",))
    iso = "iso" in stacks or "iso" in server_stacks
    line = m.key_lines.get("program", m.line)
    for program in programs:
        if program == "isoperf":
            continue
        if test not in PROGRAM_TESTS[program]:
            raise check.fail(line, where, f"program {program!r} runs test {' or '.join(PROGRAM_TESTS[program])},"
                             f" not {test!r}")
        if iso and "preload" not in frontends:
            raise check.fail(m.key_lines.get("frontend", line), where, f"{program} reaches IsoStack only through"
                             " the shim: give 'frontend: preload' (or a list with it)")
        for key in ("verify", "response_size", "sndbuf", "crosscheck"):
            if m.get(key) not in (None, False):
                raise check.fail(m.key_lines[key], where, f"{key!r} is an isoperf option; program {program!r}"
                                 " has none")
        if program == "sockperf" and conns != (1,):
            raise check.fail(m.key_lines["connections"], where, "sockperf ping-pong runs one connection")
        if program == "sockperf" and min(sizes) < 14:
            raise check.fail(m.key_lines["size"], where, "sockperf messages are at least 14 bytes")
    if "frontend" in m and not iso:
        raise check.fail(m.key_lines["frontend"], where, "'frontend' is how an IsoStack end reaches isostackd:"
                         " it needs stack iso or server_stack iso")
    if "preload" in frontends and max(instances) > 1:
        raise check.fail(m.key_lines["frontend"], where, "the preload shim attaches to one isostackd instance:"
                         " use 'frontend: preload' with instances: 1")
    return programs, frontends


def _placements(check: _Checker, m: _Mapping, where: str, stacks: tuple[str, ...],
                instances: tuple[int, ...]) -> tuple[str, ...]:
    """The `placement` axis.  `cpu` pins the client's threads itself: with it the NIC keeps the OS default
    (`spread`, the placement before the axis existed), and naming both is an error."""
    if "cpu" in m and "placement" in m:
        raise check.fail(m.key_lines["placement"], where, "'cpu' and 'placement' both say where the client runs:"
                         " give one ('placement' pins the whole client process and the NIC's interrupts)")
    if "placement" not in m:
        return ("spread",) if "cpu" in m else (DEFAULT_PLACEMENT,)
    placements = _list_of(check, m, "placement", where, str)
    for p in placements:
        if p not in PLACEMENTS:
            hint = difflib.get_close_matches(p, PLACEMENTS, n=1)
            raise check.fail(m.key_lines["placement"], where, f"unknown placement {p!r} (choose from"
                             f" {', '.join(PLACEMENTS)})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if "irq" in placements and "iso" in stacks and max(instances) > 1:
        raise check.fail(m.key_lines["placement"], where, "placement 'irq' puts the client on the vCPU of the"
                         f" NIC's interrupts, but {max(instances)} isostackd instances each have their own vCPU and"
                         " queues: use 'irq' with instances: 1 (a test of its own)")
    return placements


def _isostackd_int(check: _Checker, m: _Mapping, key: str, where: str, stacks: tuple[str, ...], lo: int, hi: int,
                   what: str) -> int | None:
    """An optional single integer passed to isostackd (None when absent); it needs stack iso in the test."""
    if key not in m:
        return None
    (value,) = _list_of(check, m, key, where, int, allow_list=False)
    _range(check, m, key, where, (value,), lo, hi)
    if "iso" not in stacks:
        raise check.fail(m.key_lines[key], where, f"{key!r} is an isostackd option ({what}): it needs stack iso")
    return value


def _bools(check: _Checker, m: _Mapping, key: str, where: str) -> tuple[bool, ...]:
    if key not in m:
        return (False,)
    value = m[key]
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, bool) for v in items) or len(set(items)) != len(items):
        raise check.fail(
            m.key_lines[key], where, f"{key!r} must be true, false or a list of distinct ones, got {value!r}"
        )
    return tuple(items)


def _string(check: _Checker, m: _Mapping, key: str, where: str) -> str:
    value = m[key]
    if not isinstance(value, str) or not value.strip():
        raise check.fail(m.key_lines[key], where, f"{key!r} must be a non-empty string, got {_type_name(value)}")
    return value


def _number(check: _Checker, m: _Mapping, key: str, where: str, default: float | None = None) -> float:
    value = m.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise check.fail(m.key_lines[key], where, f"{key!r} must be a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise check.fail(m.key_lines[key], where, f"{key!r} must be a finite number, got {value}")
    return float(value)


def _list_of(
    check: _Checker, m: _Mapping, key: str, where: str, kind: type, default: tuple = (), allow_list: bool = True
) -> tuple:
    if key not in m:
        return default
    value = m[key]
    items = value if isinstance(value, list) and allow_list else [value]
    noun = {int: "an integer", str: "a string"}[kind]
    what = f"{noun} or a list of them" if allow_list else noun
    if not items:
        raise check.fail(m.key_lines[key], where, f"{key!r} must be {what}, got an empty list")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kind):
            raise check.fail(m.key_lines[key], where, f"{key!r} must be {what}, got {_type_name(item)}")
    if len(set(items)) != len(items):
        raise check.fail(m.key_lines[key], where, f"{key!r} lists a value twice: {items}")
    return tuple(items)


def _range(check: _Checker, m: _Mapping, key: str, where: str, values: tuple[int, ...], lo: int, hi: int) -> None:
    for v in values:
        if not lo <= v <= hi:
            raise check.fail(m.key_lines[key], where, f"{key!r} must be between {lo} and {hi}, got {v}")
