"""The code the site shows is ruff-formatted and fits its 80-character column.

The site shows code in a column 83 characters wide at 1280 px: the snippets
(`snippets/<article>/*.py`), and the kernel sources (or sections of them) that
the articles include with pymdown's `--8<--`. Formatted code (`[tool.ruff]` in
pyproject.toml: 80 characters a line), with comments, docstrings and strings
wrapped at 80 characters, fits it without scrolling sideways. Run
`ruff format <path>` on a path of `FORMATTED` to fix a formatting failure; wrap
a long comment, docstring or string by hand (ruff leaves those as they are).
"""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `ruff format --check` covers: all of the package, the snippets and the tests.
FORMATTED = ["kernels", "snippets", "tests"]
LINE_LENGTH = 80
# `path:line:column: unformatted: ...` in ruff's concise output.
UNFORMATTED = re.compile(r"^(?P<path>.+?):\d+:\d+: unformatted\b", re.MULTILINE)
# A pymdown snippets include in a page: `--8<-- "path"` or
# `--8<-- "path:section"`, alone on its line (indented inside a block).
INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<section>[^"]+))?"')
# The markers of a section in an included file.
MARKER = r"--8<-- \[{}:{}\]"


def ruff() -> list[str]:
    """The command that runs ruff: the one beside this Python, else the one on
    the PATH."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        raise AssertionError(
            "ruff is not installed: pip install -c constraints.txt -e '.[test]'"
        )
    return [found]


def test_shown_code_is_formatted():
    missing = [path for path in FORMATTED if not (ROOT / path).exists()]
    assert not missing, f"paths in FORMATTED that do not exist: {missing}"
    result = subprocess.run(
        [
            *ruff(),
            "format",
            "--check",
            "--output-format",
            "concise",
            *FORMATTED,
        ],
        check=False,
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
    """The snippets the site shows: `snippets/<article>/*.py` (not the build
    tool)."""
    return sorted(
        path
        for path in (ROOT / "snippets").glob("*/*.py")
        if not path.parent.name.startswith("_")
    )


def long_lines(lines, first: int = 1) -> list[str]:
    """`line N: C characters` for each of ``lines`` (numbered from ``first``)
    longer than `LINE_LENGTH`."""
    return [
        f"line {number}: {len(line)} characters"
        for number, line in enumerate(lines, first)
        if len(line) > LINE_LENGTH
    ]


def test_snippet_lines_fit_the_code_column():
    """No line of a snippet is longer than 80 characters: ruff wraps code, but
    not the text of comments, docstrings or strings."""
    snippets = article_snippets()
    assert snippets, "no snippet found under snippets/<article>/"
    long = [
        f"{path.relative_to(ROOT)}: {entry}"
        for path in snippets
        for entry in long_lines(path.read_text(encoding="utf-8").splitlines())
    ]
    assert not long, (
        f"{len(long)} snippet lines over {LINE_LENGTH} characters:\n"
        + "\n".join(long)
    )


def included_code() -> list[tuple[str, str | None, str]]:
    """``(path, section, page)`` of every Python file that a page in docs/
    includes with ``--8<--``; ``section`` is None when the whole file is
    shown."""
    includes = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            match = INCLUDE.match(line)
            if match and match["path"].endswith(".py"):
                includes.append(
                    (match["path"], match["section"], page.relative_to(ROOT))
                )
    return includes


def shown_lines(path: str, section: str | None) -> tuple[list[str], int]:
    """The lines of ``path`` that the site shows, and the number of the first:
    the whole file, or the section between its markers, dedented as the
    snippets extension does (``dedent_subsections``)."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    if section is None:
        return lines, 1
    start = [
        i
        for i, line in enumerate(lines)
        if re.search(MARKER.format("start", re.escape(section)), line)
    ]
    end = [
        i
        for i, line in enumerate(lines)
        if re.search(MARKER.format("end", re.escape(section)), line)
    ]
    if len(start) != 1 or len(end) != 1 or end[0] <= start[0]:
        raise AssertionError(
            f"{path}: section {section!r} needs one start marker and one end "
            f"marker after it, got starts at lines {[i + 1 for i in start]} "
            f"and ends at lines {[i + 1 for i in end]}"
        )
    body = lines[start[0] + 1 : end[0]]
    return textwrap.dedent("\n".join(body)).splitlines(), start[0] + 2


def test_included_kernel_code_fits_the_code_column():
    """Every kernel file or section that an article includes with ``--8<--``
    has no line longer than 80 characters (the snippets are checked above).
    Reports every offending file at once."""
    includes = included_code()
    assert any(path.startswith("kernels/") for path, _, _ in includes), (
        "no page in docs/ includes a kernel file with --8<--"
    )
    offending = {}
    for path, section, page in includes:
        if path.startswith("snippets/"):
            continue
        lines, first = shown_lines(path, section)
        long = long_lines(lines, first)
        if long:
            shown = path if section is None else f"{path}:{section}"
            offending[shown] = (page, long)
    assert not offending, (
        f"{len(offending)} included files or sections with lines over "
        f"{LINE_LENGTH} characters:\n"
        + "\n".join(
            f"{shown} (shown in {page}): {len(long)} lines, first "
            + "; ".join(long[:3])
            for shown, (page, long) in sorted(offending.items())
        )
    )
