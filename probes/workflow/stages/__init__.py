"""Stage functions: one module per rule file, one function per rule, named after it.

A stage reads its rule's inputs, calls the library and writes its outputs; nothing else. Every rule's
``run:`` block is one call of :func:`run_stage`, which hands the stage its inputs, outputs, params and
wildcards by name, sends the package's log records to the rule's log, gives torch the scheduled threads and
writes the job's provenance record from what the rule declares. A stage is also a plain function: call it
from a notebook with paths and settings, and no record is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import atomic_path, path_checksum, write_json
from probes.models.loading import use_threads
from probes.versions import package_versions

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from transformer_lens import HookedTransformer

# The default profile runs every job in Snakemake's own process (force-use-threads), which spares each job a
# Python start, a Snakefile parse and its imports (TransformerLens alone takes 8 s). Stages share that
# process's global state (torch threads, matplotlib, the log handlers), so they run one at a time.
_ONE_STAGE_AT_A_TIME = threading.Lock()
# In that process a model one job loaded serves the later jobs on the same weights: Gemma's tokenizer alone
# takes 5 s to load, and a default run loads each model a dozen times. Stages only run forward passes on it.
_LOADED_MODELS: dict[tuple, HookedTransformer] = {}
_MODELS_KEPT = 3


def run_stage(
    stage: Callable[..., Any],
    input: Mapping[str, Any],
    output: Mapping[str, Any],
    params: Mapping[str, Any],
    log: Sequence[str] = (),
    threads: int | None = None,
    **wildcards: Any,
) -> Any:
    """Run ``stage(**input, **output, **params, **wildcards)`` as a rule's job.

    ``input``, ``output`` and ``params`` are the rule's (Snakemake's named lists, or plain mappings); an
    output named ``provenance`` is the job's record (:func:`recorded`) and is not passed on. ``wildcards`` are
    the ones the stage takes. Plot and summary rules pass no ``threads``, so that they never import torch.
    """
    inputs, outputs, arguments = dict(input.items()), dict(output.items()), dict(params.items()) | wildcards
    record = outputs.pop("provenance", None)
    with _ONE_STAGE_AT_A_TIME, stage_log(log[0] if log else None):
        use_threads(threads)
        if record is None:
            return stage(**inputs, **outputs, **arguments)
        name = f"{stage.__module__}.{stage.__qualname__}"
        with recorded(record, name, arguments, inputs, outputs) as details:
            result = stage(**inputs, **outputs, **arguments)
            details.update(result or {})
        return result


def shared_model(
    manifest: str | os.PathLike, device: str = "cpu", dtype: str = "float32", weights: str | None = None
) -> HookedTransformer:
    """:func:`probes.models.cache.load_model`, reused while the manifest is unchanged; callers must not modify it.

    The last :data:`_MODELS_KEPT` models stay loaded; a rewritten manifest (a new conversion) is loaded anew.
    """
    from probes.models.cache import load_model
    from probes.models.loading import model_format

    path = Path(manifest).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, device, *model_format(dtype, weights))
    for old in [k for k in _LOADED_MODELS if k[0] == key[0] and k[1:3] != key[1:3]]:
        del _LOADED_MODELS[old]  # an earlier conversion of this model
    model = _LOADED_MODELS.pop(key) if key in _LOADED_MODELS else load_model(manifest, device, dtype, weights)
    _LOADED_MODELS[key] = model  # the most recently used last
    for old in list(_LOADED_MODELS)[:-_MODELS_KEPT]:
        del _LOADED_MODELS[old]
    return model


def _checksums(paths: Mapping[str, str | Sequence[str]]) -> dict[str, str | list[str]]:
    return {
        name: [path_checksum(item) for item in value] if isinstance(value, list | tuple) else path_checksum(value)
        for name, value in paths.items()
    }


def _plain(paths: Mapping[str, Any]) -> dict[str, str | list[str]]:
    return {
        name: [str(p) for p in value] if isinstance(value, list | tuple) else str(value)
        for name, value in paths.items()
    }


def _seeds(value: object) -> list[int]:
    """Every seed an argument tree names (``seed``, ``seeds``, nested in settings), in order."""
    found = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("seed", "seeds") and item is not None:
                found += [int(seed) for seed in (item if isinstance(item, list | tuple) else [item])]
            else:
                found += _seeds(item)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def recorded(
    path: str | os.PathLike,
    stage_name: str,
    arguments: Mapping[str, Any],
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
) -> Iterator[dict[str, Any]]:
    """Write the job record ``path`` after the stage succeeds: its arguments, what it read and wrote, and with what.

    ``inputs`` and ``outputs`` are the paths the rule declares (a name to a path or a list of paths); their
    checksums are taken before and after the stage. The yielded dict takes what the stage reports about its
    work (counts, losses), recorded as ``details``.
    """
    input_sums = _checksums(inputs)
    details: dict[str, Any] = {}
    yield details
    write_json(
        path,
        {
            "stage": stage_name,
            "arguments": dict(arguments),
            "seeds": _seeds(arguments),
            "inputs": _plain(inputs),
            "outputs": _plain(outputs),
            "inputs_sha256": input_sums,
            "outputs_sha256": _checksums(outputs),
            "details": details,
            "versions": package_versions(),
        },
    )


@contextlib.contextmanager
def stage_log(path: str | os.PathLike | None) -> Iterator[None]:
    """Send this package's log records to a rule's ``log:`` file for the duration of one stage."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("probes")
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    except Exception:
        logger.exception("stage failed")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


def write_table(
    frame: pd.DataFrame,
    csv: str | os.PathLike,
    page: str | os.PathLike,
    title: str,
    note: str = "",
    float_format: str | None = "%.6g",
    lead: Mapping[str, str] | None = None,
) -> None:
    """A table as CSV, for analysis, and as an HTML page, for the report; ``lead`` (column: header) the
    columns the page opens with (:func:`probes.workflow.report.html_page`)."""
    from probes.workflow.report import html_page

    with atomic_path(csv) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)
    write_text(page, html_page(title, {"": frame}, note, lead=lead))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# Matplotlib stamps PDF and SVG files with the time they were drawn, and names SVG elements by random ids;
# without the dates and with a fixed salt for the ids, a figure is the same bytes every time.
UNDATED = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(fig: Figure, paths: Sequence[str | os.PathLike], dpi: int) -> None:
    """One figure in every configured format (the suffix names it), each file written atomically."""
    import matplotlib
    import matplotlib.pyplot as plt

    for path in paths:
        fmt = Path(path).suffix[1:]
        with atomic_path(path) as tmp, matplotlib.rc_context({"svg.hashsalt": "probes"}):
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt, metadata=UNDATED.get(fmt))
    plt.close(fig)
