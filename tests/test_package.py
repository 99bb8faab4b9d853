"""The package's structure: every module imports on its own, `import llama3` gives only the curated names,
and the layers contract in pyproject.toml holds and has teeth."""

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llama3

MODULES = sorted(m.name for m in pkgutil.walk_packages(llama3.__path__, "llama3."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_on_its_own(name):
    """With the package forgotten, importing one module first must work: a cycle hidden by import order fails here."""
    saved = {k: v for k, v in sys.modules.items() if k == "llama3" or k.startswith("llama3.")}
    for k in saved:
        del sys.modules[k]
    try:
        importlib.import_module(name)
    finally:
        for k in [k for k in sys.modules if k == "llama3" or k.startswith("llama3.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_import_llama3_gives_the_curated_names():
    public = {n for n in dir(llama3) if not n.startswith("_")}
    submodules = {m.split(".")[1] for m in MODULES}
    assert public - submodules == set(llama3.__all__)
    assert not {"torch", "os", "json", "math", "Path"} & public


def lint_imports(config, cwd):
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(config), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(cwd), "PATH": ""},
    )  # fmt: skip


def test_the_layers_contract_holds():
    result = lint_imports(llama3.REPO_DIR / "pyproject.toml", llama3.REPO_DIR / "notebooks")
    assert result.returncode == 0, result.stdout[-2000:]


def test_the_layers_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package in which config.py (the bottom layer) imports the model breaks the contract."""
    shutil.copytree(
        llama3.REPO_DIR / "notebooks" / "llama3", tmp_path / "llama3", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = tmp_path / "llama3" / "config.py"
    config.write_text(config.read_text() + "\nfrom . import model  # an upward import\n")
    result = lint_imports(llama3.REPO_DIR / "pyproject.toml", tmp_path)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "llama3.config -> llama3.model" in result.stdout
