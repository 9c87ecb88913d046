"""Every snippet runs as a reader would run it: copied out of the repository into an empty
folder, in a fresh process where only the installed ``kernels`` package is importable, at the
CPU sizes it picks for itself. The files the pages show must be among what it writes.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = sorted(ROOT.glob("snippets/*/[0-9][0-9]_*.py"))
MARKER = re.compile(r"\[\[\s*output:\s*([^|\]\s]+)")
WRITTEN_BY_BUILD_STEP = {"stdout.txt"}


def files_shown_on_pages(article: str, stem: str) -> set:
    shown = set()
    for page in (ROOT / "docs").glob("*.md"):
        for path in MARKER.findall(page.read_text()):
            a, s, name = path.split("/", 2)
            if (a, s) == (article, stem) and name not in WRITTEN_BY_BUILD_STEP:
                shown.add(name)
    return shown


def test_there_are_snippets():
    assert SNIPPETS, "no snippets found under snippets/<article>/NN_name.py"


@pytest.mark.parametrize(
    "snippet", SNIPPETS, ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_snippet_runs_as_printed(snippet, tmp_path):
    copy = tmp_path / snippet.name
    shutil.copy(snippet, copy)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRITON_INTERPRET", "PYTHONPATH")
    }
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, copy.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{snippet.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    assert proc.stdout.strip(), f"{snippet.name} printed nothing"
    written = {p.name for p in tmp_path.iterdir()} - {copy.name}
    missing = files_shown_on_pages(snippet.parent.name, snippet.stem) - written
    assert not missing, (
        f"the pages show {sorted(missing)} from {snippet.name}, which it did not write"
    )
