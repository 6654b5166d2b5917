"""The conftest time bound really fires (otherwise 'every test bounded' would be a claim)."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import TimeLimitExceeded


@pytest.mark.timeout(0.2)
def test_a_hanging_test_is_stopped() -> None:
    with pytest.raises(TimeLimitExceeded):
        threading.Event().wait(5)
