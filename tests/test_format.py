"""The snippets are formatted by ruff (`[tool.ruff]` in pyproject.toml: 80 characters a line).

The site shows snippet code in a column 83 characters wide at 1280 px; formatted code fits it
without scrolling sideways. Run `ruff format snippets/` to fix a failure.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATTED = ["snippets"]


def ruff() -> list[str]:
    """The command that runs ruff: the one beside this Python, else the one on the PATH."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        raise AssertionError("ruff is not installed: pip install -c constraints.txt -e '.[test]'")
    return [found]


def test_snippets_are_formatted():
    result = subprocess.run(
        [*ruff(), "format", "--check", *FORMATTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    unformatted = [
        line.removeprefix("Would reformat: ").strip()
        for line in result.stdout.splitlines()
        if line.startswith("Would reformat:")
    ]
    assert result.returncode == 0, (
        "files that `ruff format` would change (run `ruff format "
        + " ".join(FORMATTED)
        + "`):\n"
        + "\n".join(unformatted or [result.stdout + result.stderr])
    )
