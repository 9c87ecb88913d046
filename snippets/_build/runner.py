"""Run one snippet cell by cell in this process and record its outputs (the build step's child).

Usage (by the build step, in a fresh process whose working directory is an empty folder):

    python snippets/_build/runner.py SNIPPET_PATH RECORD_DIR ROOT

The snippet's percent-format cells (`# %%`, `# %% [markdown]`) are parsed here (no jupytext),
its code cells run in order in one `__main__` namespace, each compiled with the snippet's real
file name and line numbers so that tracebacks point at the snippet's lines. Each cell's stdout and
stderr go to the terminal and into the cell's outputs; image files (png, svg) written or rewritten
by a cell become display outputs of that cell, whose `text/plain` is the file name in angle
brackets (`<peak_memory.svg>`; the companion notebook finds each figure's alt text by that
name). Into RECORD_DIR it writes `cells.json` (nbformat 4
cells), `stdout.txt`, `facts.json` (the device and versions, collected in this process, and
`modules`: the sha256 of every module under ROOT that the snippet imported, read from
`sys.modules` once it finished) and, when a cell raises, `traceback.txt` (then the exit status
is 1).

Figures come out byte-identical from run to run: before the snippet runs, the runner gives
matplotlib a fixed `svg.hashsalt` and a `SOURCE_DATE_EPOCH` (see `deterministic_figures`).

Output written straight to the file descriptors (by C code or subprocesses) reaches the terminal
but not the recorded outputs. Standard library only: it never imports torch or matplotlib itself
(it reads torch from `sys.modules` when the snippet imported it, and `nvidia-smi`, when there is
one, for the driver version).
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import traceback
import types
from pathlib import Path

CELL_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
MARKDOWN_TAG = re.compile(r"\[(markdown|md)\]")
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
SVG_HASH_SALT = "kernels-book"
# One figure style for the book. A figure is FIGURE_WIDTH inches wide (6.8 in = 653 CSS px,
# the article column at 1280 px shows it at 1:1), so these font sizes are the sizes a reader
# sees on a desktop; a phone shrinks the figure and the reader taps it to zoom. Snippets set
# `figsize=(6.8, height)` themselves, so that a copied snippet draws the same figure.
FIGURE_WIDTH = 6.8
FIGURE_STYLE = f"""\
figure.figsize: {FIGURE_WIDTH}, 4.0
figure.dpi: 100
font.size: 10
axes.titlesize: 10.5
axes.labelsize: 10
xtick.labelsize: 9
ytick.labelsize: 9
legend.fontsize: 9
figure.titlesize: 11
savefig.bbox: tight
savefig.pad_inches: 0.05
"""


def parse_cells(text: str) -> list[dict]:
    """Split a percent-format script into cells.

    Returns a list of dicts with keys `cell_type` ("code" or "markdown"), `source` (str, without
    surrounding blank lines) and `line` (1-based line number of the source's first line in the
    file). Lines before the first `# %%` form a code cell when they are not blank; markdown lines
    lose their leading `# `. Empty cells are dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    raw = [("code", 1, [])]  # (cell_type, line number of the first line, lines)
    for number, line in enumerate(text.splitlines(), start=1):
        match = CELL_MARKER.match(line)
        if match:
            kind = (
                "markdown"
                if MARKDOWN_TAG.search(match.group("rest"))
                else "code"
            )
            raw.append((kind, number + 1, []))
            continue
        kind, _, lines = raw[-1]
        if kind == "markdown":
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        lines.append(line)
    cells = []
    for kind, first, lines in raw:
        while lines and not lines[0].strip():
            lines.pop(0)
            first += 1
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            cells.append(
                {"cell_type": kind, "source": "\n".join(lines), "line": first}
            )
    return cells


class Tee(io.TextIOBase):
    """A text stream that writes to the real stream and into a buffer."""

    def __init__(self, stream):
        self.stream, self.captured = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()
        return self.captured.write(text)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return False

    def fileno(self):
        return self.stream.fileno()

    @property
    def encoding(self):
        return self.stream.encoding


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Modification time and size of every file under `folder`, by relative path."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            info = path.stat()
            found[path.relative_to(folder).as_posix()] = (
                info.st_mtime_ns,
                info.st_size,
            )
    return found


def _image_output(path: Path) -> dict:
    """An nbformat display_data output showing the image file at `path`."""
    mime = IMAGE_TYPES[path.suffix.lower()]
    data = (
        path.read_text(encoding="utf-8")
        if mime == "image/svg+xml"
        else (base64.b64encode(path.read_bytes()).decode("ascii"))
    )
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {mime: data, "text/plain": f"<{path.name}>"},
    }


def _run_cell(source: str, line: int, filename: str, namespace: dict):
    """Execute one code cell in `namespace`.

    Returns (outputs, error): the cell's nbformat stream outputs and the exception it raised
    (None when it finished).
    """
    out, err = Tee(sys.__stdout__), Tee(sys.__stderr__)
    sys.stdout, sys.stderr = out, err
    error = None
    try:
        exec(compile("\n" * (line - 1) + source, filename, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - reported by the caller, whatever it is
        error = exc
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    outputs = [
        {
            "output_type": "stream",
            "name": name,
            "text": stream.captured.getvalue(),
        }
        for name, stream in (("stdout", out), ("stderr", err))
        if stream.captured.getvalue()
    ]
    return outputs, error


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def nvidia_driver() -> str | None:
    """The NVIDIA driver version that `nvidia-smi` reports (its first GPU), or None when there is
    no `nvidia-smi`, it fails or it prints nothing."""
    command = [
        "nvidia-smi",
        "--query-gpu=driver_version",
        "--format=csv,noheader",
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [
        line.strip() for line in result.stdout.splitlines() if line.strip()
    ]
    return lines[0] if result.returncode == 0 and lines else None


def _version(name: str) -> str | None:
    """The version of package `name`: from the module when the snippet imported it, else from
    its installed metadata (None when it is not installed). Never imports it."""
    module = sys.modules.get(name)
    if module is not None and isinstance(
        getattr(module, "__version__", None), str
    ):
        return module.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_facts() -> dict:
    """gpu, device, driver, cuda, torch, triton and python of this process, as meta.json records
    them (driver: the NVIDIA driver version when a GPU is present, else None).

    The GPU is the one the snippet could use: torch, when the snippet imported it, sees a CUDA
    device (this module never imports torch itself; a snippet without torch ran on the CPU).
    """
    facts = {
        "gpu": False,
        "device": _cpu_name(),
        "driver": None,
        "cuda": None,
        "torch": _version("torch"),
        "triton": _version("triton"),
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        facts.update(
            gpu=True,
            device=torch.cuda.get_device_name(0),
            driver=nvidia_driver(),
            cuda=torch.version.cuda,
        )
    return facts


def project_modules(root: Path, exclude: Path | None = None) -> dict[str, str]:
    """{path relative to `root`: sha256} of every module in `sys.modules` loaded from a `.py`
    file under `root`, except `exclude` (the snippet itself) and installed packages (a virtual
    environment inside the repository)."""
    import hashlib

    root = Path(root).resolve()
    found = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if not name or not name.endswith(".py"):
            continue
        path = Path(name).resolve()
        if (
            path == exclude
            or not path.is_relative_to(root)
            or not path.is_file()
        ):
            continue
        rel = path.relative_to(root)
        if {"site-packages", "dist-packages"} & set(rel.parts) or rel.parts[
            0
        ].startswith("."):
            continue
        found[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(found.items()))


def deterministic_figures(folder: Path) -> None:
    """Make matplotlib's figures byte-identical from run to run, before it is imported.

    Writes a `matplotlibrc` with a fixed `svg.hashsalt` into `folder` and points `MATPLOTLIBRC`
    at it (the clip-path and glyph ids of an SVG are otherwise random), and sets
    `SOURCE_DATE_EPOCH` to 0 unless it is set (matplotlib writes it as the SVG's date in place of
    today). The same file holds the book's figure style (`FIGURE_STYLE`).
    """
    rc = Path(folder) / "matplotlibrc"
    rc.write_text(
        f"svg.hashsalt: {SVG_HASH_SALT}\n{FIGURE_STYLE}", encoding="utf-8"
    )
    os.environ["MATPLOTLIBRC"] = str(rc)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")


def _format_error(error: BaseException) -> str:
    """The traceback of a cell's exception, without the runner's own frame."""
    tb = error.__traceback__.tb_next if error.__traceback__ else None
    return "".join(
        traceback.TracebackException(type(error), error, tb).format()
    )


def run(snippet: Path, record: Path, root: Path) -> int:
    """Run `snippet` in the current directory and write its records into `record`; 0 on success.

    `root` is the repository whose modules are recorded (see `project_modules`).
    """
    snippet, record, work = Path(snippet).resolve(), Path(record), Path.cwd()
    deterministic_figures(record)
    filename = str(snippet)
    main = types.ModuleType("__main__")
    main.__file__ = filename
    sys.modules["__main__"] = (
        main  # so that pickle and dataclasses find the snippet's names
    )
    sys.argv = [filename]
    sys.path[0] = str(snippet.parent)  # as when the script is run as printed
    cells, stdout, count = [], [], 0
    for cell in parse_cells(snippet.read_text(encoding="utf-8")):
        if cell["cell_type"] == "markdown":
            cells.append(
                {
                    "cell_type": "markdown",
                    "metadata": {},
                    "source": cell["source"],
                }
            )
            continue
        count += 1
        before = _snapshot(work)
        outputs, error = _run_cell(
            cell["source"], cell["line"], filename, main.__dict__
        )
        finished = isinstance(error, SystemExit) and error.code in (0, None)
        if error is not None and not finished:
            (record / "traceback.txt").write_text(
                _format_error(error), encoding="utf-8"
            )
            return 1
        after = _snapshot(work)
        for name in sorted(n for n in after if before.get(n) != after[n]):
            if Path(name).suffix.lower() in IMAGE_TYPES:
                outputs.append(_image_output(work / name))
        stdout += [o["text"] for o in outputs if o.get("name") == "stdout"]
        cells.append(
            {
                "cell_type": "code",
                "execution_count": count,
                "metadata": {},
                "outputs": outputs,
                "source": cell["source"],
            }
        )
        if finished:
            break
    facts = {
        **device_facts(),
        "modules": project_modules(root, exclude=snippet),
    }
    (record / "cells.json").write_text(
        json.dumps(cells, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    (record / "stdout.txt").write_text("".join(stdout), encoding="utf-8")
    (record / "facts.json").write_text(
        json.dumps(facts, sort_keys=True) + "\n", encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(
            f"usage: {Path(__file__).name} SNIPPET_PATH RECORD_DIR ROOT"
        )
    raise SystemExit(
        run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    )
