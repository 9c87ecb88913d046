"""Provenance of generated outputs: discovery, content hashes, meta.json and freshness.

One place for the rules that both the build step (`python -m snippets`) and the MkDocs hook
(`snippets/_build/hook.py`) apply, so that the page and `--check` always agree:

- a snippet is `snippets/<article>/<NN>_<name>.py`; its output folder is
  `docs/generated/<article>/<NN>_<name>/` with a `meta.json` beside the files it wrote;
- a page shows an output with a marker `[[ output: <article>/<stem>/<file> | alt text ]]` on a
  line of its own, outside fenced code; the alt text of a figure is written there and nowhere
  else (the companion notebooks take it from the pages too);
- an output is *fresh* when its `meta.json` records the current sha256 of the snippet file and of
  every project module the snippet imported (`modules`: {path relative to the root: sha256}, read
  from `sys.modules` by the runner at the end of the run), *stale* otherwise (also when its
  meta.json predates that record), *missing* when there is no `meta.json`, and *waiting-for-gpu*
  when it is missing and the snippet has a line `# requires: cuda` near its top (a CPU run of
  such a snippet is never published). An edit to a module that no snippet imported therefore
  leaves every output fresh, and a GPU output stays fresh until what it ran really changes.

Standard library only: this module runs on the GPU machines, which carry no site tooling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

SNIPPET_NAME = re.compile(r"^\d+_\w+\.py$")
REQUIRES_CUDA = re.compile(r"^#\s*requires:\s*cuda\s*$", re.IGNORECASE)
REQUIRES_CUDA_LINES = 30
META_FILE = "meta.json"
CELLS_FILE = "cells.json"
STDOUT_FILE = "stdout.txt"
RESERVED_FILES = (META_FILE, CELLS_FILE, STDOUT_FILE)
META_KEYS = (
    "snippet",
    "snippet_sha256",
    "modules",
    "gpu",
    "device",
    "driver",
    "cuda",
    "torch",
    "triton",
    "python",
    "triton_interpret",
    "date",
    "commit",
    "dirty",
    "duration_s",
    "files",
)
OUTPUT_MARKER = re.compile(
    r"^(?P<indent>[ \t]*)\[\[\s*output:\s*(?P<target>[^|\]]+?)\s*"
    r"(?:\|\s*(?P<alt>[^\]]*?)\s*)?\]\]\s*$"
)
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")


@dataclasses.dataclass(frozen=True)
class Snippet:
    """One snippet script.

    Attributes:
        article: the article folder name, e.g. "flash_attention".
        stem: the file name without ".py", e.g. "02_memory".
        path: absolute path of the script.
        rel: the script's path relative to the repository root, with forward slashes.
    """

    article: str
    stem: str
    path: Path
    rel: str

    @property
    def key(self) -> str:
        """`<article>/<stem>`: the name used by `--only`, by page markers and in messages."""
        return f"{self.article}/{self.stem}"

    @property
    def command(self) -> str:
        """The command that regenerates this snippet's output."""
        return f"python -m snippets --only {self.key}"

    @property
    def requires_cuda(self) -> bool:
        """True when one of the first lines of the script is `# requires: cuda`."""
        with open(self.path, encoding="utf-8") as f:
            for _, line in zip(range(REQUIRES_CUDA_LINES), f):
                if REQUIRES_CUDA.match(line.strip()):
                    return True
        return False

    @property
    def root(self) -> Path:
        """The repository root that `rel` is relative to."""
        return self.path.parents[len(Path(self.rel).parts) - 1]


@dataclasses.dataclass(frozen=True)
class Status:
    """Freshness of one snippet's output.

    Attributes:
        state: "fresh", "stale", "missing" or "waiting-for-gpu".
        reason: what explains the state, e.g. "kernels/ops.py changed" ("" when fresh).
        meta: the parsed meta.json, or None when there is none.
        needs_gpu: True when only a run on a GPU machine can update this output (the snippet
            requires CUDA, or its current output came from a GPU and a CPU run never replaces it).
    """

    state: str
    reason: str
    meta: dict | None
    needs_gpu: bool


def discover(root: Path) -> list[Snippet]:
    """Return every `snippets/<article>/<NN>_<name>.py` under the repository `root`, sorted."""
    base = Path(root) / "snippets"
    found = []
    if not base.is_dir():
        return found
    for article in sorted(p for p in base.iterdir() if p.is_dir()):
        if article.name.startswith(("_", ".")):
            continue
        for path in sorted(article.iterdir()):
            if path.is_file() and SNIPPET_NAME.match(path.name):
                rel = path.relative_to(root).as_posix()
                found.append(
                    Snippet(article.name, path.stem, path.resolve(), rel)
                )
    return found


def select(snippets: list[Snippet], pattern: str | None) -> list[Snippet]:
    """Keep the snippets whose `<article>/<stem>` matches `pattern`.

    The pattern is a full `<article>/<stem>` (that snippet alone), an fnmatch pattern
    (`flash_attention/0*`) or a plain substring (`memory`);
    a leading `snippets/` and a trailing `.py` are ignored, so a file path works too.
    """
    import fnmatch

    if pattern is None:
        return list(snippets)
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"pattern must be a non-empty string, got {pattern!r}")
    pattern = (
        pattern.strip()
        .replace("\\", "/")
        .removeprefix("snippets/")
        .removesuffix(".py")
    )
    exact = [s for s in snippets if s.key == pattern]
    if exact:  # a full name selects that snippet alone, even when it is part of another name
        return exact
    return [
        s
        for s in snippets
        if fnmatch.fnmatchcase(s.key, pattern) or pattern in s.key
    ]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache: dict | None) -> str | None:
    """`sha256_file(path)`, or None when there is no such file; `cache` ({path: hash}, or None for
    no caching) saves hashing a module once per snippet that imported it."""
    path = Path(path)
    if cache is not None and path in cache:
        return cache[path]
    digest = sha256_file(path) if path.is_file() else None
    if cache is not None:
        cache[path] = digest
    return digest


def output_dir(generated: Path, snippet: Snippet) -> Path:
    """The output folder of `snippet` under the generated root (`docs/generated`)."""
    return Path(generated) / snippet.article / snippet.stem


def read_meta(folder: Path) -> dict | None:
    """The parsed `meta.json` of an output folder, or None when it has none.

    Raises:
        ValueError: when the file exists but is not a JSON object.
    """
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path} must hold a JSON object, got {type(meta).__name__}"
        )
    return meta


def status(
    snippet: Snippet, generated: Path, hashes: dict | None = None
) -> Status:
    """The freshness of `snippet`'s output under `generated`.

    `hashes` is a cache of file hashes ({path: sha256}) shared by the calls of one build or check,
    so that each module is read once; pass a new dict whenever the sources may have changed.
    """
    meta = read_meta(output_dir(generated, snippet))
    requires_cuda = snippet.requires_cuda
    if meta is None:
        if requires_cuda:
            return Status(
                "waiting-for-gpu",
                "requires CUDA and waits for a GPU run",
                None,
                True,
            )
        return Status("missing", "has no output yet", None, False)
    needs_gpu = requires_cuda or bool(meta.get("gpu"))
    changed = []
    if meta.get("snippet_sha256") != cached_sha256(snippet.path, hashes):
        changed.append(snippet.rel)
    modules = meta.get("modules")
    if not isinstance(modules, dict):
        return Status(
            "stale",
            "its meta.json predates the record of the modules it imported",
            meta,
            needs_gpu,
        )
    for rel, digest in sorted(modules.items()):
        current = cached_sha256(snippet.root / rel, hashes)
        if current != digest:
            changed.append(rel if current is not None else f"{rel} (removed)")
    if not changed:
        return Status("fresh", "", meta, needs_gpu)
    if len(changed) > 3:
        changed[2:] = [f"{len(changed) - 2} more files"]
    listed = (
        f"{', '.join(changed[:-1])} and {changed[-1]}"
        if len(changed) > 1
        else changed[0]
    )
    return Status("stale", f"{listed} changed", meta, needs_gpu)


def markdown_lines(markdown: str):
    """Yield `(line, in_code)` for each line of `markdown`; `in_code` is True for the lines of a
    fenced code block, its fences included, where markers are examples and never rendered."""
    fence = None
    for line in markdown.split("\n"):
        if fence is not None:
            closing = line.strip()
            if len(closing) >= len(fence) and closing == fence[0] * len(
                closing
            ):
                fence = None
            yield line, True
        elif opening := FENCE.match(line):
            fence = opening.group("fence")
            yield line, True
        else:
            yield line, False


def figure_alt_texts(docs_dir: Path) -> dict[str, str]:
    """The alt text of every output marker on the site's pages, by its target.

    Reads every `*.md` under `docs_dir` except the generated outputs and returns
    `{"<article>/<stem>/<file>": alt}` for each `[[ output: ... | alt ]]` marker outside fenced
    code that has an alt text; when two pages show the same file, the first page (in path
    order) names it.
    """
    docs_dir = Path(docs_dir)
    found: dict[str, str] = {}
    for page in sorted(docs_dir.rglob("*.md")):
        if page.relative_to(docs_dir).parts[0] == "generated":
            continue
        for line, in_code in markdown_lines(page.read_text(encoding="utf-8")):
            marker = None if in_code else OUTPUT_MARKER.match(line)
            if marker and marker.group("alt"):
                found.setdefault(
                    marker.group("target").strip(), marker.group("alt")
                )
    return found


def short_date(meta: dict) -> str:
    """The day (YYYY-MM-DD) of a meta.json's ISO date, or "an unknown date"."""
    date = meta.get("date")
    return date[:10] if isinstance(date, str) and date else "an unknown date"


def provenance_line(meta: dict) -> str:
    """One line naming where and from what an output was generated.

    Example: "Generated on NVIDIA H100 80GB HBM3 · CUDA 12.8 · torch 2.11.0 · triton 3.6.0 ·
    2026-11-23 · commit abc1234", or on a CPU "Generated on CPU (AMD EPYC 7763) · torch
    2.13.0+cpu · triton 3.9.0 · 2026-11-23 · commit abc1234 (uncommitted changes)".
    """
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    device = meta.get("device") or "an unknown device"
    parts = [
        f"Generated on {device}"
        if meta.get("gpu")
        else f"Generated on CPU ({device})"
    ]
    if meta.get("gpu") and meta.get("cuda"):
        parts.append(f"CUDA {meta['cuda']}")
    for name in ("torch", "triton"):
        if meta.get(name):
            parts.append(f"{name} {meta[name]}")
    if meta.get("triton_interpret") and not meta.get("gpu"):
        parts.append("Triton kernels in the interpreter")
    parts.append(short_date(meta))
    commit = (
        f"commit {meta['commit'][:7]}" if meta.get("commit") else "no commit"
    )
    parts.append(
        commit + (" (uncommitted changes)" if meta.get("dirty") else "")
    )
    return " · ".join(parts)
