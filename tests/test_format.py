"""The snippets are formatted by ruff (`[tool.ruff]` in pyproject.toml: 80 characters a line).

The site shows snippet code in a column 83 characters wide at 1280 px: formatted code, with
comments and docstrings wrapped at 80 characters, fits it without scrolling sideways. Run
`ruff format snippets/` to fix a formatting failure; wrap a long comment, docstring or string
by hand (ruff leaves those as they are).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATTED = ["snippets"]
LINE_LENGTH = 80
# `path:line:column: unformatted: ...` in ruff's concise output.
UNFORMATTED = re.compile(r"^(?P<path>.+?):\d+:\d+: unformatted\b", re.MULTILINE)


def ruff() -> list[str]:
    """The command that runs ruff: the one beside this Python, else the one on the PATH."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        raise AssertionError(
            "ruff is not installed: pip install -c constraints.txt -e '.[test]'"
        )
    return [found]


def test_snippets_are_formatted():
    result = subprocess.run(
        [
            *ruff(),
            "format",
            "--check",
            "--output-format",
            "concise",
            *FORMATTED,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    unformatted = sorted(set(UNFORMATTED.findall(result.stdout)))
    assert result.returncode == 0, (
        f"files that `ruff format {' '.join(FORMATTED)}` would change:\n"
        + "\n".join(unformatted or [result.stdout + result.stderr])
    )


def article_snippets() -> list[Path]:
    """The snippets the site shows: `snippets/<article>/*.py` (not the build tool)."""
    return sorted(
        path
        for path in (ROOT / "snippets").glob("*/*.py")
        if not path.parent.name.startswith("_")
    )


def test_snippet_lines_fit_the_code_column():
    """No line of a snippet is longer than 80 characters: ruff wraps code, but not the text of
    comments, docstrings or strings."""
    snippets = article_snippets()
    assert snippets, "no snippet found under snippets/<article>/"
    long = [
        f"{path.relative_to(ROOT)}:{number}: {len(line)} characters"
        for path in snippets
        for number, line in enumerate(
            path.read_text(encoding="utf-8").splitlines(), 1
        )
        if len(line) > LINE_LENGTH
    ]
    assert not long, (
        f"{len(long)} snippet lines over {LINE_LENGTH} characters:\n"
        + "\n".join(long)
    )
