"""MkDocs hook that renders generated outputs, with their provenance, on the site's pages.

Registered in mkdocs.yml with `hooks: [snippets/mkdocs_hook.py]`; needs the Markdown extensions
`attr_list` and `admonition`. It rewrites two markers in each page's Markdown (never inside
fenced code blocks or inline code):

- `[[ output: <article>/<stem>/<file> | alt text ]]` on a line of its own: an image (svg, png,
  with the CSS class `generated-figure`), the inlined Markdown table (.md), a text block (.txt)
  or a JSON block (.json), followed by a provenance paragraph (class `provenance`). A stale output
  gets a "Stale output" warning; a missing one of a `# requires: cuda` snippet a "Waiting for a
  GPU run" note. Any other missing output, unknown file or missing alt text of a figure is logged
  as a warning (so `mkdocs build --strict` fails) and shown in a "Missing output" box.
- inline `[[ value: <article>/<stem>/<file>.json#key.sub ]]`: the value from a generated JSON file
  (floats with 3 significant digits, large ones as integers); a warning when it is missing.
- `[[ outputs-table ]]` on a line of its own: a table of every snippet's output, where and when
  it was generated and whether it is fresh, stale or still waiting for a run.

The kernels hash and the state of each output are computed once per build (`on_pre_build`).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import sys
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parent.parent
if str(_REPOSITORY) not in sys.path:  # MkDocs loads this file by path, not as a package member
    sys.path.insert(0, str(_REPOSITORY))

from snippets._provenance import (  # noqa: E402
    Snippet, Status, discover, kernels_sha256, provenance_line, short_date, status,
)

log = logging.getLogger("mkdocs.plugins.snippets")

TABLE_MARKER = re.compile(r"^[ \t]*\[\[\s*outputs-table\s*\]\]\s*$")
OUTPUT_MARKER = re.compile(r"^(?P<indent>[ \t]*)\[\[\s*output:\s*(?P<target>[^|\]]+?)\s*"
                           r"(?:\|\s*(?P<alt>[^\]]*?)\s*)?\]\]\s*$")
VALUE_MARKER = r"\[\[\s*value:\s*(?P<target>[^\]#]+?)\s*#\s*(?P<key>[^\]\s]+)\s*\]\]"
CODE_SPAN_OR_VALUE = re.compile(r"(?P<code>(?P<ticks>`+).*?(?P=ticks))|" + VALUE_MARKER)
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")
IMAGES = (".svg", ".png", ".jpg", ".jpeg", ".gif", ".webp")
REQUIRED_EXTENSIONS = ("attr_list", "admonition")


class _Build:
    """What one site build knows about the generated outputs (computed once, cached)."""

    def __init__(self, config):
        config_file = config.get("config_file_path")
        self.root = Path(config_file).resolve().parent if config_file else _REPOSITORY
        self.docs_dir = Path(config["docs_dir"]).resolve()
        self.generated = self.docs_dir / "generated"
        self.kernels_sha = kernels_sha256(self.root)
        self.snippets = {s.key: s for s in discover(self.root)}
        self._statuses: dict[str, Status] = {}

    def status(self, snippet: Snippet) -> Status:
        """The (cached) state of `snippet`'s output."""
        if snippet.key not in self._statuses:
            self._statuses[snippet.key] = status(snippet, self.generated, self.kernels_sha)
        return self._statuses[snippet.key]


_BUILD: _Build | None = None


def _build(config) -> _Build:
    """The current build's facts, created when a page is rendered without `on_pre_build`."""
    global _BUILD
    if _BUILD is None or _BUILD.docs_dir != Path(config["docs_dir"]).resolve():
        _BUILD = _Build(config)
    return _BUILD


def on_config(config):
    """Warn when a Markdown extension the rendered markers rely on is not enabled."""
    names = [e if isinstance(e, str) else next(iter(e)) for e in config["markdown_extensions"]]
    for needed in REQUIRED_EXTENSIONS:
        if not any(n.split(".")[-1] == needed for n in names):
            log.warning("snippets hook: add the Markdown extension %r to mkdocs.yml", needed)
    return config


def on_pre_build(config):
    """Hash the sources and find the snippets once for this build."""
    global _BUILD
    _BUILD = _Build(config)


def on_page_markdown(markdown, page, config, files):
    """Replace the output and value markers of one page's Markdown."""
    return render(markdown, page.file.src_uri, _build(config))


def render(markdown: str, src_uri: str, build: _Build) -> str:
    """`markdown` with its markers rendered; `src_uri` is the page's path inside docs_dir."""
    lines, fence = [], None
    for line in markdown.split("\n"):
        opening = FENCE.match(line)
        if fence is not None:
            if _closes(fence, line):
                fence = None
            lines.append(line)
        elif opening:
            fence = opening.group("fence")
            lines.append(line)
        elif TABLE_MARKER.match(line):
            lines += outputs_table(build).split("\n")
        elif marker := OUTPUT_MARKER.match(line):
            block = _output(marker.group("target"), marker.group("alt"), src_uri, build)
            lines += [marker.group("indent") + b if b else "" for b in block.split("\n")]
        else:
            lines.append(CODE_SPAN_OR_VALUE.sub(lambda m: _inline(m, src_uri, build), line))
    return "\n".join(lines)


def outputs_table(build: _Build) -> str:
    """A Markdown table: each snippet, where and when its output was made, and its state."""
    rows = ["| Snippet | Generated on | Date | Commit | State |", "|---|---|---|---|---|"]
    for key, snippet in sorted(build.snippets.items()):
        state, meta = build.status(snippet), build.status(snippet).meta
        if meta is None:
            where = date = commit = "–"
        else:
            where = (f"{meta.get('device')}, CUDA {meta.get('cuda')}" if meta.get("gpu")
                     else f"CPU ({meta.get('device')})")
            where += f", torch {meta.get('torch')}, triton {meta.get('triton')}"
            date, commit = short_date(meta), (meta.get("commit") or "none")[:7]
        label = {"fresh": "fresh", "stale": f"stale: {state.reason}", "missing": "missing",
                 "waiting-for-gpu": "waits for a GPU run"}.get(state.state, state.state)
        rows.append(f"| `{key}` | {where} | {date} | {commit} | {label} |")
    return "\n".join(rows) + "\n"


def _closes(fence: str, line: str) -> bool:
    """Whether `line` closes a code block opened by `fence` (same character, at least as long)."""
    closing = line.strip()
    return len(closing) >= len(fence) and closing == fence[0] * len(closing)


def _admonition(kind: str, title: str, text: str) -> str:
    """A Material admonition block."""
    return f'!!! {kind} "{title}"\n    {text}\n'


def _missing(message: str, src_uri: str) -> str:
    """Log `message` as a warning (fails a strict build) and return a box that shows it."""
    log.warning("%s: %s", src_uri, message)
    return _admonition("failure", "Missing output", message)


def _resolve(target: str, src_uri: str, build: _Build):
    """(snippet, status, file name) of a marker target `<article>/<stem>/<file>`, or a message."""
    parts = target.strip().split("/")
    if len(parts) < 3 or not all(parts):
        return f"expected <article>/<stem>/<file> in the marker, got {target!r}"
    key, name = "/".join(parts[:2]), "/".join(parts[2:])
    snippet = build.snippets.get(key)
    if snippet is None:
        return f"no snippet snippets/{key}.py for the marker {target!r}"
    return snippet, build.status(snippet), name


def _output(target: str, alt: str | None, src_uri: str, build: _Build) -> str:
    """The Markdown that replaces one `[[ output: ... ]]` marker."""
    found = _resolve(target, src_uri, build)
    if isinstance(found, str):
        return _missing(found, src_uri)
    snippet, state, name = found
    if state.state == "waiting-for-gpu":
        return _admonition("info", "Waiting for a GPU run", (
            f"`{name}` comes from `{snippet.rel}`, which requires a CUDA GPU and has not run on "
            f"one yet. Generate it on a GPU machine with `{snippet.command}`."))
    if state.state == "missing":
        return _missing(f"{snippet.rel} has no output yet: run `{snippet.command}`", src_uri)
    path = build.generated / snippet.key / name
    if not path.is_file():
        return _missing(f"the output of {snippet.rel} has no file {name!r}", src_uri)
    suffix = path.suffix.lower()
    if suffix in IMAGES and not alt:
        log.warning("%s: the figure %r needs alt text: [[ output: %s | ... ]]",
                    src_uri, target, target)
    blocks = []
    if state.state == "stale":
        gpu = " on a GPU machine" if state.needs_gpu else ""
        blocks.append(_admonition("warning", "Stale output", (
            f"The sources changed since this output was generated on {short_date(state.meta)} "
            f"({state.reason}). Regenerate it{gpu} with `{snippet.command}`.")))
    url = posixpath.relpath(f"generated/{snippet.key}/{name}", posixpath.dirname(src_uri) or ".")
    blocks.append(_embed(path, alt or "", url))
    blocks.append(f"{provenance_line(state.meta)}\n{{: .provenance }}\n")
    return "\n".join(blocks)


def _fenced(text: str, language: str) -> str:
    """`text` in a fenced code block whose fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}\n"


def _embed(path: Path, alt: str, url: str) -> str:
    """The Markdown showing one generated file."""
    suffix = path.suffix.lower()
    if suffix in IMAGES:
        alt = alt.replace("[", "\\[").replace("]", "\\]")
        return f"![{alt}]({url}){{ .generated-figure }}\n"
    if suffix == ".md":
        return path.read_text(encoding="utf-8").strip() + "\n"
    if suffix == ".txt":
        return _fenced(path.read_text(encoding="utf-8"), "text")
    if suffix == ".json":
        return _fenced(path.read_text(encoding="utf-8"), "json")
    return f"[{path.name}]({url})\n"


def format_value(value) -> str:
    """A JSON value as prose: str() for strings, ints and bools, 3 significant digits for floats
    (large floats as integers, so 1234.5 reads "1234"), JSON for lists, objects and null."""
    if isinstance(value, float):
        text = f"{value:.3g}"
        return f"{value:.0f}" if "e+" in text else text
    if isinstance(value, (str, int)):
        return str(value)
    return json.dumps(value)


def _lookup(data, key: str):
    """`data` followed along a dotted key (list items by index); raises KeyError when absent."""
    for part in key.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(part)
    return data


def _inline(match: re.Match, src_uri: str, build: _Build) -> str:
    """The text that replaces one inline match: code spans unchanged, value markers rendered."""
    if match.group("code"):
        return match.group(0)
    target, key = match.group("target").strip(), match.group("key")
    found = _resolve(target, src_uri, build)
    if isinstance(found, str):
        log.warning("%s: %s", src_uri, found)
        return f"**[missing: {target}#{key}]**"
    snippet, state, name = found
    if state.state == "waiting-for-gpu":
        log.info("%s: %s#%s waits for a GPU run of %s", src_uri, target, key, snippet.rel)
        return "*(waiting for a GPU run)*"
    path = build.generated / snippet.key / name
    try:
        return format_value(_lookup(json.loads(path.read_text(encoding="utf-8")), key))
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s: no value %s#%s (%s: %s); run `%s`", src_uri, target, key,
                    type(error).__name__, error, snippet.command)
        return f"**[missing: {target}#{key}]**"
