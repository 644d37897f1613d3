"""The HTML report as a reader sees it: opened in headless Chromium, every figure and table clicked open."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from urllib.parse import unquote

import pytest

from chromium import Browser, find_or_install_chromium
from helpers import snakemake

pytestmark = pytest.mark.slow

CATEGORIES = ["Concept depth", "Latent language", "Sparse autoencoders", "Neurons", "Depth usage", "Run info"]
FIGURES = {
    "concept_depth_smollm2-135m.png",
    "concept_depth_relative.png",
    "concept_depth_levels.png",
    "concept_depth_perturbations_smollm2-135m.png",
    "latent_language_relative.png",
    "latent_language_smollm2-135m_everyday_translation_fr-en.png",
    "tuned_lens_kl.png",
    "sae_metrics.png",
    "sparse_probing_smollm2-135m_cities.png",
    "sparse_probing_smollm2-135m_coinflip.png",
    "neuron_probing_smollm2-135m_cities.png",
    "neuron_probing_smollm2-135m_coinflip.png",
    "depth_usage_sublayers.png",
    "depth_usage_shortcuts.png",
    "depth_usage_quality.png",
    "depth_usage_quality_correlations.png",
    "depth_usage_layer_maps.png",
    "depth_usage_layer_matches.png",
    "depth_usage_skipping_smollm2-135m.png",
}
TABLES = {
    "concept_depth_summary.html",
    "latent_language_summary.html",
    "sae_metrics.html",
    "sparse_probing_summary.html",
    "sae_vs_transcoder.html",
    "neuron_probing_summary.html",
    "best_neurons.html",
    "run_info.html",
    "cities.html",
    "coinflip.html",
    "concept_depth_perturbations.html",
    "concept_depth_by_level.html",
    "shortcut_audit.html",
    "depth_usage_summary.html",
}
CLICK_LINK = (
    "(text => {{ [...document.querySelectorAll('a')].find(a => a.innerText.trim() === text).click(); "
    "return true; }})({})"
)
SHOWN_ITEM = """(() => {
    const item = [...document.querySelectorAll('img, iframe')].find(e => !e.src.includes('filename=logo.svg'));
    return item && {tag: item.tagName, src: item.src, complete: item.tagName === 'IFRAME' || item.complete,
                    width: item.naturalWidth || item.clientWidth, height: item.naturalHeight || item.clientHeight};
})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable, why_not = find_or_install_chromium()
    if executable is None:
        pytest.skip(f"the report test needs headless Chromium: {why_not}")
    browser = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


def painted_fraction(png: bytes) -> float:
    """Share of a screenshot's pixels that are not the blank page's white."""
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return float((pixels < 0.97).any(axis=-1).mean())


def landing_painted(browser: Browser, path, timeout: float = 20.0) -> float:
    """Screenshots until the page is painted: the report styles itself with a script after it loads."""
    deadline = time.monotonic() + timeout
    while (painted := painted_fraction(browser.screenshot(path).read_bytes())) <= 0.1 and time.monotonic() < deadline:
        time.sleep(0.25)
    return painted


def filename(src: str) -> str:
    return re.search(r"filename=([^;]+);", src).group(1)


def test_report_shows_every_figure_and_table_in_chromium(run, browser, tmp_path):
    snakemake(run, "--report", "results/report.html")
    browser.open((run / "results/report.html").as_uri())
    browser.wait_for("[...document.querySelectorAll('a')].some(a => a.innerText.trim() === 'Run info')")
    browser.wait_for(
        "[...document.querySelectorAll('canvas')].some(c => c.width > 100 && c.height > 100)"
    )  # the rule graph
    assert landing_painted(browser, tmp_path / "landing.png") > 0.1  # a blank page is 0

    figures, tables, captions = {}, {}, []
    for category in CATEGORIES:
        browser.evaluate(CLICK_LINK.format(json.dumps(category)))
        n_items = browser.wait_for("document.querySelectorAll('a[iconname=eye]').length")
        shown = None
        for index in range(n_items):
            browser.evaluate(f"document.querySelectorAll('a[iconname=eye]')[{index}].click()")
            item = browser.wait_for(
                f"(item => item && item.src !== {json.dumps(shown)} && item.complete && item)({SHOWN_ITEM})"
            )
            shown = item["src"]
            if item["tag"] == "IMG":
                figures[filename(item["src"])] = (item["width"], item["height"])
                if len(figures) == 1:  # one figure as it is drawn on screen, not just decoded
                    assert painted_fraction(browser.screenshot(tmp_path / "figure.png").read_bytes()) > 0.1
            else:
                encoded = item["src"].split("base64,", 1)[1]
                tables[filename(item["src"])] = base64.b64decode(unquote(encoded)).decode()
        browser.evaluate("document.querySelectorAll('a[iconname=information-circle]')[0].click()")
        captions.append(browser.wait_for("document.body.innerText.includes('DESCRIPTION') && document.body.innerText"))
        browser.evaluate(CLICK_LINK.format(json.dumps("Results")))

    assert set(figures) == FIGURES
    assert all(width > 300 and height > 200 for width, height in figures.values()), figures  # decoded, not broken
    assert set(tables) == TABLES and all("<table" in page and "<td>" in page for page in tables.values())
    assert "smollm2-135m" in tables["sae_metrics.html"] and "everyday" in tables["latent_language_summary.html"]
    assert all("smollm2-135m" in caption for caption in captions)  # captions name the models, from the config
