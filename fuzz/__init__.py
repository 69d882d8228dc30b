"""Coverage-guided fuzzing of the parsers that take untrusted input (docs/reliability.md#fuzzing).

One harness module per target, each with `TARGETS` (the modules it fuzzes, for instrumentation and the line
coverage report) and `one_input(data)`, which raises only when the target broke its contract. The engines are
in engine.py (atheris when it is installed, else a plain-Python mutator); `python -m fuzz` runs them.
"""

import os
import sys

HARNESSES = ("vhost_protocol", "vring", "offload", "classifier", "attach", "commands", "playbook")

# From the repository root (`python -m fuzz`) the folder testbed/ would shadow the installed package testbed as
# a namespace package (as .ci/check-imports explains): once this package is imported, the root leaves sys.path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _ROOT]
