"""Small file helpers shared by every stage: checksums and all-or-nothing writes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Checksum that keys caches and provenance, so a changed input is never mistaken for an old one."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and move it into place only if the block succeeds.

    A crash or a raised error therefore never leaves a half-written cached output behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; results are for the whole group
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory output: it appears whole, or not at all."""
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write sorted, indented JSON atomically so metadata files diff cleanly between runs."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def stage_log(path: str | os.PathLike | None) -> Iterator[None]:
    """Send this package's log records to a rule's ``log:`` file for the duration of one stage."""
    import logging

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


def use_threads(threads: int | None) -> None:
    """Give torch the cores the scheduler granted, not every core of a shared cluster node."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def stage(func: Callable[P, R]) -> Callable[..., R]:
    """Make a function callable from a rule in one line: ``log=``, ``threads=`` and ``provenance=`` are handled here.

    Rules call ``stage(**input, **output, **params, **wildcards, log=log[0], threads=threads)``, so a
    stage's argument names are the names its rule gives to files and parameters. A rule that names a
    ``provenance`` output gets a record of every argument, input and output checksum and version beside it.
    """

    @functools.wraps(func)
    def run(
        *args: Any,
        log: str | os.PathLike | None = None,
        threads: int | None = None,
        provenance: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> R:
        with stage_log(log):
            use_threads(threads)
            if provenance is None:
                return func(*args, **kwargs)
            from probes.provenance import recorded

            with recorded(provenance, func.__module__ + "." + func.__qualname__, kwargs):
                return func(*args, **kwargs)

    return run
