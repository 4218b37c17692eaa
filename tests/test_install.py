"""The install files agree: what a learner needs is in the main dependencies, conda gets the same set."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(specs):
    return {spec.split(">")[0].split("<")[0].split("=")[0].strip() for spec in specs}


def test_a_learner_gets_jupyterlab_and_the_widgets_without_the_dev_extra():
    assert {"jupyterlab", "ipykernel", "ipywidgets", "matplotlib"} <= _names(PROJECT["dependencies"])
    assert _names(PROJECT["optional-dependencies"]["dev"]) == {"pytest", "nbval", "ruff", "playwright", "pexpect",
                                                                        "trl"}


def test_environment_yml_names_every_dependency_with_the_same_range():
    env = (ROOT / "environment.yml").read_text()
    for spec in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]:
        assert f'"{spec}"' in env, spec
    # Linux: PyPI's torch is the CUDA build; the CPU index gives the "+cpu" one.
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in env


def test_every_test_marker_is_registered_and_left_out_of_the_quick_tier():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = [line.split(":")[0] for line in options["markers"]]
    assert markers == ["slow", "multiprocess", "benchmark", "browser"]
    assert all(f"not {marker}" in options["addopts"] for marker in markers)
    assert '-m ""' in (ROOT / "run").read_text()  # ./run test (and CI) runs every tier


def test_every_run_command_the_course_names_exists_in_run():
    # A learner copies `./run NAME` from the README, the docs, a notebook or a model card; a name
    # the script lacks only prints its usage.
    import re

    script = (ROOT / "run").read_text()
    commands = set(re.findall(r"(?m)^  ([a-z][a-z-]*)\)", script))
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.md"),
             *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "course_lib").rglob("*.py")]
    named = {(path.name, name) for path in texts
             for name in re.findall(r"\./run ([a-z][a-z-]*)", path.read_text())}
    assert {"finetune", "test", "export"} <= commands
    assert not {(file, name) for file, name in named if name not in commands}
