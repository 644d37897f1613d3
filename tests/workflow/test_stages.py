"""What every stage shares: figures written the same way every time."""

from __future__ import annotations

import time

import pytest

from probes.workflow.stages import save_figure


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


@pytest.mark.slow
def test_jobs_in_one_process_share_a_loaded_model_until_its_manifest_is_rewritten(smollm2_manifest, tmp_path):
    import os

    import torch

    from probes.io import write_json
    from probes.models.loading import read_manifest
    from probes.workflow.stages import shared_model

    manifest = tmp_path / "manifest.json"
    write_json(manifest, read_manifest(smollm2_manifest))  # same weights, a manifest of its own
    first = shared_model(manifest)
    assert shared_model(manifest) is first and shared_model(manifest, weights="fp32") is first
    half = shared_model(manifest, weights="bf16")
    assert half is not first and half.cfg.dtype == torch.bfloat16 and first.cfg.dtype == torch.float32
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a new conversion would
    again = shared_model(manifest)
    assert again is not first
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
