"""The HTML report as a reader sees it: every caption renders as docutils means it, and the built report, opened in
headless Chromium, shows every figure and table."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import yaml

from chromium import Browser, find_or_install_chromium
from helpers import REPO, snakemake

CATEGORIES = [
    "Concept depth",
    "Latent language",
    "Sparse autoencoders",
    "Neurons",
    "Depth usage",
    "Causal checks",
    "Run info",
]
FIGURES = {
    "concept_depth_smollm2-135m.png",
    "concept_depth_relative.png",
    "concept_depth_levels.png",
    "concept_depth_perturbations_smollm2-135m.png",
    "latent_language_relative.png",
    "latent_language_smollm2-135m_everyday_translation_fr-en.png",
    "tuned_lens_kl.png",
    "dual_latent.png",
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
    "causal_effects.png",
    "causal_erasure_smollm2-135m.png",
    "causal_steering_smollm2-135m.png",
    "causal_specificity_smollm2-135m.png",
}
TABLES = {
    "concept_depth_summary.html",
    "latent_language_summary.html",
    "dual_latent_summary.html",
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
    "causal_readout.html",
    "causal_effects.html",
    "causal_probes.html",
    "causal_fits.html",
    "causal_summary.html",
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


CAPTIONS = sorted((REPO / "workflow" / "report").glob("*.rst"))
# What docutils writes into the HTML when a caption's markup goes wrong; the report shows it to the reader.
SYSTEM_MESSAGE = re.compile(r"System Message|system-message|Docutils System Messages")


def caption_problems(text: str) -> list[str]:
    """The docutils messages (warnings and errors, as the report shows them) of one rendered caption, and
    single backquotes, which docutils renders as a citation in italics rather than as code."""
    from docutils.core import publish_parts

    stream = io.StringIO()
    body = publish_parts(text, writer="html", settings_overrides={"warning_stream": stream})["body"]
    problems = [line for line in stream.getvalue().splitlines() if line.strip()]
    return problems + (["single backquotes: <cite>, not code; write ``double``"] if "<cite>" in body else [])


def rendered_captions(config_name: str, embedded: bool) -> dict[str, str]:
    """Every caption as Snakemake renders it (Jinja, as its report does) for a config of the repository,
    validated and resolved as the Snakefile does, on the config's first model, task and experiment."""
    import jinja2

    from probes.workflow.config import validate_config

    config = validate_config(yaml.safe_load((REPO / "config" / config_name).read_text()), [config_name])
    experiments = [run for runs in config["latent_language"]["experiments"].values() for run in runs]
    run = experiments[0] if experiments else {"word_list": "everyday", "task": "translation", "src": "fr", "tgt": "en"}
    wildcards = SimpleNamespace(model=next(iter(config["models"])), dataset=next(iter(config["datasets"])), **run)
    params = SimpleNamespace(weights="fp32", embedded=embedded)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    snakemake = SimpleNamespace(config=config, wildcards=wildcards, params=params)
    return {path.name: env.from_string(path.read_text()).render(snakemake=snakemake) for path in CAPTIONS}


@pytest.mark.parametrize("embedded", [False, True])
@pytest.mark.parametrize("config_name", ["config.yaml", "test.yaml"])
def test_every_caption_renders_without_a_docutils_message(config_name, embedded):
    problems = {name: caption_problems(text) for name, text in rendered_captions(config_name, embedded).items()}
    assert not {name: found for name, found in problems.items() if found}


def test_caption_check_catches_what_docutils_would_show():
    assert "Undefined substitution" in caption_problems("ranked by |mean1 − mean0| (left)")[0]
    assert "emphasis start-string" in caption_problems("hold dequantised weights (marked *).")[0]
    assert caption_problems("intervals `_lo` / `_hi`")
    assert not caption_problems(r"ranked by \|mean1 − mean0\| (marked \*), ``_lo``")


def test_a_summary_page_leads_with_its_decision_columns_and_keeps_every_column_a_click_away(tmp_path):
    import pandas as pd

    from probes.workflow.stages import write_table

    frame = pd.DataFrame(
        {
            "model": ["smollm2-135m", "gemma3-270m"],
            "dataset": ["cities", "coinflip"],
            "decodable": [True, False],
            "best_accuracy": [0.91234, 0.52],
            "best_accuracy_lo": [0.88, 0.47],
            "best_accuracy_hi": [0.94, 0.57],
            "half_rise_layer": [12.0, None],
            "half_rise_layer_lo": [10.0, None],
            "half_rise_layer_hi": [14.5, None],
        }
        | {f"extra_{i}": [i, i] for i in range(30)}
    )
    lead = {"model": "model", "dataset": "task", "decodable": "decodable", "half_rise_layer": "half-rise layer"}
    lead |= {"best_accuracy": "best accuracy", "not_in_this_run": "never shown"}
    write_table(frame, tmp_path / "t.csv", tmp_path / "t.html", "Summary", lead=lead)
    page = (tmp_path / "t.html").read_text()
    shown, rest = page.split("<details>")
    headers = re.findall(r"<th>(.*?)</th>", shown)
    assert headers == ["model", "task", "decodable", "half-rise layer", "best accuracy"]
    assert "<td>0.912 [0.88, 0.94]</td>" in shown and "<td>12 [10, 14.5]</td>" in shown
    assert "<td>yes</td>" in shown and "<td>no</td>" in shown
    assert "<summary>All 39 columns</summary>" in rest and rest.count("<th>") == 39
    assert list(pd.read_csv(tmp_path / "t.csv").columns) == list(frame.columns)  # the CSV keeps every column


@pytest.mark.slow
def test_report_shows_every_figure_and_table_in_chromium(run, browser, tmp_path):
    snakemake(run, "--report", "results/report.html")
    # captions sit in the report as HTML inside a JSON blob; docutils' messages keep their class and title there
    report = (run / "results/report.html").read_text(encoding="utf-8")
    assert not SYSTEM_MESSAGE.search(report), sorted(set(re.findall(r"</p>\\n([^<]*)</div>", report)))
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
    lead = tables["concept_depth_summary.html"].split("<details>")[0]  # the decision columns, then every column
    assert "<th>half-rise layer</th>" in lead and "<th>best accuracy</th>" in lead
    assert all("smollm2-135m" in caption for caption in captions)  # captions name the models, from the config
