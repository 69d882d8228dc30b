"""`python3 -m isostack.dispatcher ...`: the same as the isostackd command."""

import sys

from .cli import main

sys.exit(main())
