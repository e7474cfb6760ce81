"""The commands that README.md and docs/ show exist and parse as written: each is run with
--helpshort appended (absl prints the flags and exits before any work), so a renamed flag, config
file or config key in the documentation fails here. (`bash scripts/demo.sh` and `scripts/test.sh`
run in full elsewhere: CI runs the second, the demo's numbers come from a run of the first.)"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands():
    """(document, command line) for every `.venv/bin/python ...` line of a ```bash block, continuations joined."""
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith(".venv/bin/python "):
                    commands.append((document.name, line))
    return commands


def test_the_documents_show_commands():
    names = {line.split()[1] for _, line in documented_commands()}
    assert {"train.py", "eval.py", "predict.py", "-m"} <= names


@pytest.mark.parametrize("document, line", documented_commands())
def test_documented_command_parses(document, line):
    arguments = shlex.split(line)[1:]
    environment = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, *arguments, "--helpshort"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=120)
    # absl exits with status 1 after printing the help; a bad flag, file or key is an `error:` line instead.
    assert "Try --helpfull" in result.stdout and "error" not in result.stderr.lower(), \
        f"{document}: {line}\n{result.stderr[-2000:]}"


def test_the_module_map_lists_the_tree():
    """docs/design.md's module map names every module of the package and nothing that is not there."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("## Module map")[1].split("```")[1]
    listed = {line.split()[0] for line in block.strip().splitlines()}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "maskformer_jax").rglob("*.py") if path.name != "__init__.py"}
    assert {name for name in listed if name.startswith("maskformer_jax/")} == modules
    assert all((ROOT / name).exists() for name in listed)
