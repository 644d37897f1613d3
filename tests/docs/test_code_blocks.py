"""Every fenced code block of the README and the docs is run or checked here, so the documentation cannot drift.

One test per block, by its language: ``yaml`` is a config (merged over the test config, validated by the schema
and by the run's input checks) or a Snakemake profile; ``bash`` commands are the ones CI runs or Snakemake
command lines, dry-run on the test config in a fresh directory; ``python`` runs in a fresh interpreter,
offline, in the repository or, when it reads ``results/``, in the test run. A ``text`` block is skipped only
when the line before it is ``<!-- output -->``; any other block fails, so none can go unchecked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import MODEL_CACHE, REPO, snakemake, write_config

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CI_COMMAND = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]


@dataclass(frozen=True)
class Block:
    where: str
    language: str
    body: str
    output: bool  # the line before the fence is <!-- output -->
    layout: bool = False  # the line before the fence is <!-- package layout -->

    @property
    def needs_real_model(self) -> bool:
        return any(name in self.body.lower() for name in ("smollm2", "gemma"))


def code_blocks() -> list[Block]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            where = f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
            language = (match["info"].split() or [""])[0]
            body = "\n".join(line.removeprefix(match["indent"]) for line in match["body"].splitlines())
            found.append(Block(where, language, body, before == "<!-- output -->", before == "<!-- package layout -->"))
    return found


BLOCKS = code_blocks()


def case(block: Block):
    slow = block.language == "python" and block.needs_real_model
    return pytest.param(block, id=block.where, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("block", [case(block) for block in BLOCKS])
def test_code_block(block: Block, tmp_path: Path, request):
    handlers = {"yaml": check_yaml, "bash": check_shell, "console": check_shell, "python": run_python, "text": output}
    if block.language not in handlers:
        pytest.fail(f"{block.where}: no check for a ```{block.language} block; use yaml, bash, python or text")
    handlers[block.language](block, tmp_path, request)


def test_the_documents_have_code_blocks():
    assert sum(block.where.startswith("README.md") for block in BLOCKS) >= 6
    assert {"yaml", "bash", "python"} <= {block.language for block in BLOCKS}


# yaml -------------------------------------------------------------------------------------------------------


def check_yaml(block: Block, tmp_path: Path, request) -> None:
    data = yaml.safe_load(block.body)
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    if set(data) <= set(schema["properties"]):
        check_config(data)
    elif set(data) <= snakemake_options():
        check_profile(data)
    else:
        pytest.fail(f"{block.where}: neither config keys nor Snakemake profile options: {sorted(data)}")


def check_config(data: dict) -> None:
    """Merged over the test config as Snakemake merges config files, then checked as the Snakefile checks it."""
    from probes.workflow.config import validate_config

    config = merged(yaml.safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8")), data)
    validate_config(config, ["test.yaml"])  # fills in the defaults and model lists, as the Snakefile does
    # A block that names its own models or datasets shows placeholders for the user's files: schema only.
    if not {"models", "datasets"} & set(data):
        from probes.workflow.config import check_inputs

        check_inputs(config, str(REPO))


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def snakemake_options() -> set[str]:
    from snakemake.cli import get_argument_parser

    return {option[2:] for option in get_argument_parser()._option_string_actions if option.startswith("--")}


def check_profile(data: dict) -> None:
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "workflow").rglob("*.smk")), re.M))
    for option in ("set-resources", "set-threads"):
        assert set(data.get(option, {})) <= rules, f"{option} names unknown rules"


# bash -------------------------------------------------------------------------------------------------------


def commands(block: Block) -> list[str]:
    """The block's command lines: continuations joined, comments dropped; a console block's lines after `$ `."""
    lines = block.body.replace("\\\n", " ").splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip() and not line.startswith("#")]


def check_shell(block: Block, tmp_path: Path, request) -> None:
    for n, line in enumerate(commands(block)):
        if "tests/run.sh" in line:
            assert line == CI_COMMAND.strip(), f"{block.where}: the test command is not what .ci/run runs"
        for command in line.split(" && "):
            argv = shlex.split(command)
            if argv == ["bash", "install.sh"]:
                assert "bash install.sh" in CI_COMMAND, f"{block.where}: .ci/run does not install with install.sh"
            elif argv == ["bash", "tests/run.sh"]:
                pass  # checked against .ci/run above
            elif argv[0] == ".venv/bin/snakemake":
                dry_run(argv[1:], tmp_path / f"command{n}")
            elif argv[:2] == ["bash", "tests/slurm/local_cluster.sh"] and argv[2] in ("start", "stop"):
                script = (REPO / "tests" / "slurm" / "local_cluster.sh").read_text(encoding="utf-8")
                assert f"{argv[2]}) {argv[2]} ;;" in script
            else:
                pytest.fail(f"{block.where}: no check for the command {command!r}")


def dry_run(args: list[str], tmp: Path) -> None:
    """A Snakemake command line on the test config: its --directory becomes a fresh folder, every --configfile
    it names the test config there, and profile paths the repository's."""
    options, directory, configfiles = [], ".", []
    while args:
        arg = args.pop(0)
        if arg == "--directory":
            directory = args.pop(0)
        elif arg == "--configfile":
            while args and not args[0].startswith("-"):
                configfiles.append(args.pop(0))
        elif arg == "--workflow-profile":
            options += [arg, str(REPO / args.pop(0))]
        else:
            options.append(arg)
    work = tmp / directory
    work.mkdir(parents=True)
    names = tuple(Path(name).name for name in configfiles) or ("test.yaml",)
    for name in names:
        write_config(work, name)
    snakemake(work, *options, "--dry-run", configfiles=names)


# python and text --------------------------------------------------------------------------------------------


def run_python(block: Block, tmp_path: Path, request) -> None:
    """In a fresh interpreter, offline; from the repository root, or, when the block reads a run's results, from a
    folder whose ``results/`` holds the test run's outputs and the shared model cache (as a default run's does)."""
    where = REPO
    if "results/" in block.body:
        where, run = tmp_path / "work", request.getfixturevalue("run")
        (where / "results").mkdir(parents=True)
        for entry in (run / "results").iterdir():
            (where / "results" / entry.name).symlink_to(entry)
        if not (where / "results" / "models").exists():
            (where / "results" / "models").symlink_to(MODEL_CACHE)
        (where / "data").symlink_to(REPO / "data")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", block.body], cwd=where, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def output(block: Block, tmp_path: Path, request) -> None:
    if block.layout:
        pytest.skip(f"{block.where}: the package drawing, checked by tests/workflow/test_layout.py")
    if not block.output:
        pytest.fail(f"{block.where}: a text block must be an output sample, marked by <!-- output --> before it")
    pytest.skip(f"{block.where}: output sample")
