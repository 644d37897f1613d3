"""The install path: one dependency list, mirrored for conda, and a README whose commands CI runs."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement


def test_environment_yml_installs_what_pyproject_declares(repo):
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    environment = yaml.safe_load((repo / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert sorted(map(str, map(Requirement, pip_section))) == sorted(map(str, map(Requirement, declared)))
    assert "python=3.11" in environment["dependencies"]


def test_torch_is_not_pinned_to_a_cpu_build_for_everyone(repo):
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in declared if Requirement(d).name == "torch")
    assert "==" not in str(torch.specifier)
    assert "PROBES_TORCH:-torch==2.13.0" in (repo / "install.sh").read_text()


def test_ci_runs_the_readme_test_command(repo):
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (repo / "README.md").read_text(), flags=re.S)
    install_and_run, test = blocks[0].strip(), blocks[1].strip()
    assert "install.sh" in install_and_run and "snakemake" in install_and_run
    assert test in (repo / ".ci" / "run").read_text()
