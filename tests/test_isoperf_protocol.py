"""isoperf.protocol: the test parameters the start message carries."""

from __future__ import annotations

import pytest

from isoperf.errors import IsoperfError
from isoperf.protocol import RunParams


def test_params_check_rejects_bad_values():
    with pytest.raises(IsoperfError, match="duration must be > 0"):
        RunParams(duration=0).check()
