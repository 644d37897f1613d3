"""Every figure a test draws is closed after it, so a module of figure tests holds one figure at a time."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
