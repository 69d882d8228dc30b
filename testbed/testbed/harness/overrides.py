"""`fab run-benchmark --set KEY=VALUE`: playbook values changed on the command line, checked like the file.

Why here and not by editing the text: the strict validation (playbook.validate) runs on the edited mappings,
so a bad value is refused with the same message as in the file, located at the `--set` that gave it; the
resolved playbook is then written out as YAML, and that text (with its sha256) is what run.json records and
what `--resume` runs again.

KEY forms:
  duration=5                 a test key: set in every entry of `tests` (overriding the entry and `defaults`)
  seed=7, order=shuffled     a top-level key: name, description, order, seed, interval_s
  defaults.warmup=0.5        a key of `defaults`
  tests.0.connections=[1,4]  a key of one test, by index (0-based) or by name (tests.rr-64.size=128)
VALUE is YAML: 5, 0.5, true, iso, [1, 4], [legacy, iso].
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from pathlib import Path

import yaml

from testbed.harness import playbook as pb

_TOP_SCALARS = ("name", "description", "order", "seed", "interval_s")
_TEST_KEYS = tuple(k for k in pb._TEST_KEYS if k != "name")  # renaming every test at once makes duplicates


def load(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> pb.Playbook:
    """The playbook at `path` with the `--set` overrides applied and validated; without any, load_playbook."""
    if not sets:
        return pb.load_playbook(path)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise pb.PlaybookError(f"{path}: cannot read playbook: {e.strerror or e}") from None
    top = pb.load_yaml(text, path)
    for raw in sets:
        apply(top, path, raw)
    resolved = resolved_text(top, path, tuple(sets))
    playbook = pb.validate(top, resolved, path)
    return dataclasses.replace(playbook, overrides=tuple(sets), source_sha256=hashlib.sha256(text.encode()).hexdigest())


def apply(top: pb._Mapping, path: Path, raw: str) -> None:
    """Set one `KEY=VALUE` in the loaded playbook; a PlaybookError names the `--set` and the key."""

    def fail(message: str) -> pb.PlaybookError:
        return pb.PlaybookError(f"{path}: --set {raw}: {message}")

    key, sep, text = raw.partition("=")
    key = key.strip()
    if not sep or not key:
        raise fail("expected KEY=VALUE (e.g. duration=5, tests.0.connections=[1,4])")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise fail(f"the value is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    parts = key.split(".")
    where = f"--set {raw}"
    if len(parts) == 1 and key in _TOP_SCALARS:
        _put(top, key, value, where)
    elif len(parts) == 1 and key in _TEST_KEYS:
        for entry in _tests(top, fail):
            _put(entry, key, value, where)
    elif len(parts) == 2 and parts[0] == "defaults":
        _check_key(parts[1], _TEST_KEYS, fail)
        if "defaults" not in top:
            defaults = pb._Mapping()
            defaults.line, defaults.key_lines = where, {}
            _put(top, "defaults", defaults, where)
        elif not isinstance(top["defaults"], dict):
            raise fail("the playbook's 'defaults' is not a mapping")
        _put(top["defaults"], parts[1], value, where)
    elif len(parts) == 3 and parts[0] == "tests":
        _check_key(parts[2], _TEST_KEYS + ("name",), fail)
        _put(_test(_tests(top, fail), parts[1], fail), parts[2], value, where)
    else:
        head = parts[0]
        if len(parts) == 1 or head not in ("defaults", "tests"):
            _check_key(head, _TOP_SCALARS + _TEST_KEYS + ("defaults", "tests"), fail)
        forms = "KEY (a test key: every test, or name, description, order, seed, interval_s), defaults.KEY, " \
                "tests.N.KEY or tests.NAME.KEY"
        raise fail(f"cannot set {key!r} this way; use {forms}")


def _check_key(key: str, allowed: tuple[str, ...], fail) -> None:
    if key not in allowed:
        hint = difflib.get_close_matches(key, list(allowed), n=1)
        raise fail(f"unknown key {key!r} (allowed: {', '.join(allowed)})"
                   + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _tests(top: pb._Mapping, fail) -> list:
    tests = top.get("tests")
    if not isinstance(tests, list) or not tests:
        raise fail("the playbook has no list of tests to set it in")
    return tests


def _test(tests: list, which: str, fail) -> dict:
    """A test entry by 0-based index or by name."""
    names = [t.get("name") if isinstance(t, dict) else None for t in tests]
    if which.isdigit():
        if int(which) >= len(tests):
            raise fail(f"tests has {len(tests)} entries (0..{len(tests) - 1}), not {which}")
        entry = tests[int(which)]
    elif which in names:
        entry = tests[names.index(which)]
    else:
        raise fail(f"no test named {which!r} (tests: {', '.join(str(n) for n in names)})")
    if not isinstance(entry, pb._Mapping):
        raise fail(f"tests.{which} is not a mapping")
    return entry


def _put(m: pb._Mapping, key: str, value, where: str) -> None:
    if not isinstance(m, pb._Mapping):
        return  # not a mapping: the validation says so, at its line
    m[key] = value
    m.key_lines[key] = where  # a validation error about this key names the --set (playbook._Checker.fail)


def resolved_text(top: pb._Mapping, path: Path, sets: tuple[str, ...]) -> str:
    """The playbook after the overrides as YAML (comments are lost: the file's own text keeps them)."""
    header = f"# {path} resolved with " + " ".join(f"--set {s}" for s in sets) + "\n"
    return header + yaml.safe_dump(_plain(top), sort_keys=False, default_flow_style=None, width=1000,
                                   allow_unicode=True)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
