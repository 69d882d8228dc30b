"""One harness under atheris (libFuzzer), in its own process: `python -m fuzz.atheris_main NAME -- ARGS`.

The harness' targets are imported under atheris.instrument_imports, so libFuzzer sees their branches; ARGS
go to libFuzzer (-max_total_time, corpus folders). `python -m fuzz` starts this and reads its output.
"""

from __future__ import annotations

import importlib
import logging
import sys

import atheris

#: the project's packages, instrumented as the harness imports them (its TARGETS are among them)
PACKAGES = ("vhea", "isostack", "testbed")


def main() -> None:
    name = sys.argv[1]
    args = [sys.argv[0], *sys.argv[3:]] if sys.argv[2:3] == ["--"] else [sys.argv[0], *sys.argv[2:]]
    logging.disable(logging.CRITICAL)  # the targets log every refused input: millions of lines
    with atheris.instrument_imports(include=list(PACKAGES)):
        harness = importlib.import_module(f"fuzz.{name}")
    atheris.Setup(args, harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
