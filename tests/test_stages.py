"""What every stage shares: figures written the same way every time."""

from __future__ import annotations

import time

import pytest

from probes.stages import save_figure


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_a_figure_is_the_same_bytes_when_drawn_again(tmp_path, fmt):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(name):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 1])
        save_figure(fig, [tmp_path / f"{name}.{fmt}"], dpi=50)
        return (tmp_path / f"{name}.{fmt}").read_bytes()

    first = draw("first")
    time.sleep(1.1)  # PDF and SVG dates have a resolution of one second
    assert draw("second") == first
