"""`python3 -m isoperf`: how the guests run it (PYTHONPATH at the uploaded copy, no pip packages)."""

import sys

from .cli import main

sys.exit(main())
