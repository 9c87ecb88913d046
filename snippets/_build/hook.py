"""MkDocs hook that renders generated outputs, with their provenance, on the site's pages.

Registered in mkdocs.yml as the plugin `generated-outputs` (listed last under `plugins:`), which
pyproject.toml declares as an entry point of the installed package: MkDocs then imports this
module as `snippets._build.hook`, a member of its package, so it finds its neighbours
(`provenance`) by a plain import and the tests import the very module the site build runs. (A
`hooks:` entry would load the file by path under another module name, and its imports would
need the repository on `sys.path`.) Needs the Markdown extensions `attr_list` and `admonition`.
It rewrites these markers in each page's Markdown (never inside
fenced code blocks or inline code):

- `[[ output: <article>/<stem>/<file> | alt text ]]` on a line of its own: an image (svg, png,
  with the CSS class `generated-figure`, and `raster` too for an SVG that holds a raster
  image (a heatmap, or many points drawn as pixels), which the dark palette leaves in its own
  colours; the `glightbox` plugin, listed after this one, wraps it in a link that opens it at
  full size), the inlined Markdown table (.md), a text block (.txt)
  or a JSON block (.json), followed by a provenance paragraph (class `provenance`). A stale output
  gets a "Stale output" warning. The outputs of a `# requires: cuda` snippet that has not run on
  a GPU yet share one "Waiting for a GPU run" note, where the page's first marker of that
  snippet stands (later markers of it render nothing): what the reader will see there (the
  snippet's docstring) and the command that produces it. Any other missing output, unknown
  file or missing alt text of a figure is logged as a warning (so `mkdocs build --strict`
  fails) and shown in a "Missing output" box.
- inline `[[ value: <article>/<stem>/<file>.json#key.sub ]]`: the value from a generated JSON file
  (floats with 3 significant digits, large ones as integers); a warning when it is missing.
- inline `[[ device: <article>/<stem> ]]`: where that snippet's output was produced, e.g.
  "NVIDIA H100 80GB HBM3" or "CPU (Intel Xeon ...)"; "*waiting for a GPU run*" for a
  `# requires: cuda` snippet without output; a warning when there is no output otherwise.
- `[[ outputs-table ]]` on a line of its own: a table of every snippet's output, where and when
  it was generated and whether it is fresh, stale or still waiting for a run.
- `[[ gpu-environment ]]` on a line of its own: the environment of the most recent output made
  on a GPU (device, driver, CUDA, torch, triton, Python, date, commit), or a note that no output
  has been produced on a GPU yet.

Inside fenced code it rewrites one thing: a whole-file include of a snippet,
`--8<-- "snippets/<article>/<stem>.py"` (pymdownx.snippets' syntax, on a line of its own), becomes
the snippet's code without its `# %%` cell markers (`clean_snippet`), so that the page shows, and
the copy button copies, plain Python that runs as it is; markdown cells read as comments.

On notebook pages (rendered by mkdocs-jupyter) it also gives each output image the alt text
that the companion notebook records for it (`metadata[<mime>]["alt"]`, written by the build
step from the page markers), in place of nbconvert's "No description has been provided".

Search: on notebook pages it marks the prompts ("In [1]:"), the text of the copy buttons and
the code blocks `data-search-exclude`, so that the index holds a notebook's prose, not the code
its article shows already (Material's search plugin skips the marked elements, then drops the
attribute). After the build it adds fields to `search/search_index.json`
(`add_search_aliases`): `aliases` and `title_aliases`, the hyphenated words of a section's
text and title written without the hyphen ("chunk-wise" is found by "chunkwise"), and `name`,
on the first section of an article named after its op (`op_articles`), that name
("flash_attention"), weighted as a title.

The source hashes and the state of each output are computed once per build (`on_pre_build`).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import posixpath
import re
from pathlib import Path


from mkdocs.plugins import BasePlugin
from mkdocs.utils import get_relative_url

from snippets._build.notebook import docstring
from snippets._build.provenance import (
    OUTPUT_MARKER,
    Snippet,
    Status,
    discover,
    markdown_lines,
    provenance_line,
    short_date,
    status,
)

log = logging.getLogger("mkdocs.plugins.snippets")

TABLE_MARKER = re.compile(r"^[ \t]*\[\[\s*outputs-table\s*\]\]\s*$")
GPU_ENVIRONMENT_MARKER = re.compile(r"^[ \t]*\[\[\s*gpu-environment\s*\]\]\s*$")
VALUE_MARKER = (
    r"\[\[\s*value:\s*(?P<target>[^\]#]+?)\s*#\s*(?P<key>[^\]\s]+)\s*\]\]"
)
DEVICE_MARKER = r"\[\[\s*device:\s*(?P<snippet>[^\]\s]+)\s*\]\]"
INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+).*?(?P=ticks))|"
    + VALUE_MARKER
    + "|"
    + DEVICE_MARKER
)
OUTPUT_START = re.compile(r"^[ \t]*\[\[\s*output\s*:")
IMG_TAG = re.compile(r"<img\b[^>]*>")
IMG_SRC = re.compile(r'\ssrc="(?P<src>[^"]*)"')
IMG_ALT = re.compile(r'\salt="[^"]*"')
IMG_CLASS = re.compile(r'\sclass="(?P<value>[^"]*)"')
IMAGES = (".svg", ".png", ".jpg", ".jpeg", ".gif", ".webp")
# A raster image inside an SVG: what matplotlib writes for imshow (a heatmap) and for
# an artist drawn with rasterized=True.
SVG_RASTER = re.compile(r"<image\b")


def has_raster(svg: str) -> bool:
    """Whether an SVG figure holds a raster image (matplotlib's imshow, or an
    artist drawn with `rasterized=True`).

    The dark palette inverts figures so that lines and labels read on a dark
    page. Inverted, a heatmap's colours would turn into others that its colour
    bar does not name, so a figure with a raster image keeps its own colours."""
    return SVG_RASTER.search(svg) is not None


REQUIRED_EXTENSIONS = ("attr_list", "admonition")
# Opening tags of a rendered notebook that the search index should not hold: the prompts, the
# copy buttons' text, the headings' "¶" links and every <pre> (the code and its printed
# output). Only elements without a nested element of their own tag: Material's search parser
# ends an excluded element at the first closing tag of the same name.
NOT_SEARCHED = re.compile(
    r'<(?P<tag>pre|div|span|a)\b(?P<attrs>(?<=<pre)[^>]*|[^>]*\bclass="(?:jp-InputPrompt|'
    r'jp-OutputPrompt|clipboard-copy-txt|notice|anchor-link)\b[^"]*"[^>]*)>'
)
TAG = re.compile(r"<[^>]*>")
PROVENANCE_PARAGRAPH = re.compile(r'<p class="provenance">.*?</p>', re.S)
PROVENANCE_COMMIT = re.compile(r"\bcommit ([0-9a-f]{7,40})\b")
GITHUB_REPO = re.compile(
    r"^https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?$"
)
HYPHENATED = re.compile(r"(?<![\w-])([A-Za-z]+(?:-[A-Za-z]+)+)(?![\w-])")
SNIPPET_INCLUDE = (
    re.compile(  # a whole-file include of a snippet (no section, no line range)
        r"""^(?P<indent>[ \t]*)-+8<-+[ \t]+(?P<quote>["'])"""
        r"""snippets/(?P<key>[^/"':]+/[^/"':]+)\.py(?P=quote)[ \t]*$"""
    )
)
CELL_MARKER_LINE = re.compile(r"^# %%.*$")


class _Build:
    """What one site build knows about the generated outputs (computed once, cached)."""

    def __init__(self, config):
        config_file = config.get("config_file_path")
        self.root = (
            Path(config_file).resolve().parent if config_file else Path.cwd()
        )
        self.docs_dir = Path(config["docs_dir"]).resolve()
        self.generated = self.docs_dir / "generated"
        self.hashes: dict = {}
        self.snippets = {s.key: s for s in discover(self.root)}
        self.articles = {s.article for s in self.snippets.values()}
        self._statuses: dict[str, Status] = {}

    def status(self, snippet: Snippet) -> Status:
        """The (cached) state of `snippet`'s output."""
        if snippet.key not in self._statuses:
            self._statuses[snippet.key] = status(
                snippet, self.generated, self.hashes
            )
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
    # Names, or {name: options}; plugins may add Extension instances (mkdocstrings does).
    names = [
        e
        if isinstance(e, str)
        else next(iter(e), "")
        if isinstance(e, dict)
        else ""
        for e in config["markdown_extensions"]
    ]
    for needed in REQUIRED_EXTENSIONS:
        if not any(n.split(".")[-1] == needed for n in names):
            log.warning(
                "snippets hook: add the Markdown extension %r to mkdocs.yml",
                needed,
            )
    return config


def on_pre_build(config):
    """Hash the sources and find the snippets once for this build."""
    global _BUILD
    _BUILD = _Build(config)


def on_page_markdown(markdown, page, config, files):
    """Replace the markers of one page's Markdown.

    With a `repo_url`, "<repository-url>" becomes that address. Articles (the pages
    `<article>.md` of a snippet folder `snippets/<article>/`) also rank
    above their companion notebooks and the site's other pages in the search (Material's
    per-page ``search.boost``): a notebook repeats its article's words, and the API page names
    every op, and either would otherwise come first.
    """
    build = _build(config)
    if config.get(
        "repo_url"
    ):  # e.g. the Reproduce page's `git clone <repository-url>`
        markdown = markdown.replace(
            "<repository-url>", config["repo_url"].rstrip("/") + ".git"
        )
    if page.file.src_uri.removesuffix(".md") in build.articles:
        page.meta.setdefault("search", {}).setdefault("boost", 2)
    return render(markdown, page.file.src_uri, build)


def on_page_content(html_text, page, config, files):
    """Link the commits of the page's provenance lines to the repository (when `repo_url` is
    set); on a notebook page, also give the output images the alt text its notebook records,
    and keep its prompts, buttons and code out of the search index."""
    html_text = link_commits(html_text, config.get("repo_url"))
    if not page.file.src_uri.endswith(".ipynb") or not page.file.abs_src_path:
        return html_text
    notebook = json.loads(
        Path(page.file.abs_src_path).read_text(encoding="utf-8")
    )
    return exclude_from_search(with_notebook_alt_text(html_text, notebook))


def link_commits(html_text: str, repo_url: str | None) -> str:
    """`html_text` with each "commit abc1234" of a provenance paragraph linked to that commit
    in the repository at `repo_url` (unchanged without one)."""
    if not repo_url:
        return html_text
    base = html.escape(repo_url.rstrip("/"), quote=True)

    def paragraph(match):
        return PROVENANCE_COMMIT.sub(
            lambda m: (
                f'commit <a href="{base}/commit/{m.group(1)}">{m.group(1)}</a>'
            ),
            match.group(0),
        )

    return PROVENANCE_PARAGRAPH.sub(paragraph, html_text)


def github_path(repo_url: str | None) -> str | None:
    """``owner/name`` of a GitHub repository URL, else None (Colab opens GitHub only)."""
    match = GITHUB_REPO.match(repo_url or "")
    return match.group(1) if match else None


def notebook_links(page, config, files) -> dict | None:
    """The companion notebook of an article or notebook page, as the page template shows it.

    ``{"name": file name, "download": its address relative to the page, "page": the
    notebook page's address relative to the page (None on the notebook page itself),
    "colab": the notebook opened in Colab from the repository (None without a GitHub
    ``repo_url``)}``, or None for a page with no notebook.
    """
    src = page.file.src_uri
    if src.endswith(".ipynb"):
        notebook = page.file
    else:
        article = src.removesuffix(".md")
        if "/" in article or article not in _build(config).articles:
            return None
        notebook = files.get_file_from_path(
            f"generated/{article}/{article}.ipynb"
        )
        if notebook is None:
            return None
    name = posixpath.basename(notebook.src_uri)
    links = {
        "name": name,
        "download": get_relative_url(notebook.url + name, page.url),
        "page": None
        if notebook is page.file
        else get_relative_url(notebook.url, page.url),
        "colab": None,
    }
    repo = github_path(config.get("repo_url"))
    if repo:
        root = (
            Path(config["config_file_path"]).resolve().parent
            if config.get("config_file_path")
            else Path.cwd()
        )
        docs = Path(config["docs_dir"]).resolve().relative_to(root).as_posix()
        branch = (config.get("extra") or {}).get("repo_branch") or "main"
        links["colab"] = (
            f"https://colab.research.google.com/github/{repo}/blob/{branch}/"
            f"{docs}/{notebook.src_uri}"
        )
    return links


def on_page_context(context, page, config, nav, files):
    """Tell the page template (overrides/main.html) about the page's companion notebook."""
    context["notebook_links"] = notebook_links(page, config, files)
    return context


def exclude_from_search(html_text: str) -> str:
    """`html_text` of a rendered notebook with its prompts, the text of its copy buttons, the
    "¶" links of its headings and its code blocks (`<pre>`) marked `data-search-exclude`
    (Material's search plugin skips them and then removes the mark)."""
    return NOT_SEARCHED.sub(
        lambda m: (
            f'<{m.group("tag")} data-search-exclude="notebook"{m.group("attrs")}>'
        ),
        html_text,
    )


def on_post_build(config):
    """Add the search aliases to the index that the search plugin wrote."""
    path = Path(config["site_dir"]) / "search" / "search_index.json"
    if not path.is_file():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(
        json.dumps(
            add_search_aliases(index, op_articles(_build(config))),
            separators=(",", ":"),
        ),
        encoding="utf-8",
    )


def op_articles(build: _Build) -> set[str]:
    """The articles named after the op they build: `<name>.md` that shows `name` as code
    (`` `flash_attention` `` or a call `flash_attention(`). Only these are found by their file
    name: a name such as "attention_concentration" would otherwise catch every search for
    "attention" (the search matches the start of words)."""
    found = set()
    for article in build.articles:
        page = build.docs_dir / f"{article}.md"
        if page.is_file() and re.search(
            rf"`{re.escape(article)}`|\b{re.escape(article)}\(",
            page.read_text(encoding="utf-8"),
        ):
            found.add(article)
    return found


def add_search_aliases(index: dict, articles: set[str]) -> dict:
    """`index` (Material's search_index.json) with the fields `aliases`, `title_aliases`, `name`.

    The search splits words at hyphens and matches the start of words, so "chunkwise" would not
    find "chunk-wise": an entry's `aliases` are the hyphenated words of its text joined
    ("chunkwise"), weighted as its text, and its `title_aliases` those of its title, weighted
    as its title. The first entry of the page of `<name>.md`, for a name in
    `articles`, gets `name`: the file name, by which its code and outputs go
    ("flash_attention"), weighted as a title (with the articles' page boost, above the API
    entries that carry the name in their titles).
    """
    fields = index.setdefault("config", {}).setdefault("fields", {})
    title_boost = fields.get("title", {}).get("boost", 1e3)
    fields.setdefault(
        "aliases", {"boost": fields.get("text", {}).get("boost", 1.0)}
    )
    fields.setdefault("title_aliases", {"boost": title_boost})
    fields.setdefault("name", {"boost": title_boost})
    for entry in index.get("docs", []):
        for field, source in (("title_aliases", "title"), ("aliases", "text")):
            text = html.unescape(TAG.sub(" ", entry.get(source, "")))
            joined = {
                word.replace("-", "").lower()
                for word in HYPHENATED.findall(text)
            }
            if joined:
                entry[field] = " ".join(sorted(joined))
        location = entry.get("location", "")
        if "#" not in location and location.strip("/") in articles:
            entry["name"] = location.strip("/")
    return index


def render(markdown: str, src_uri: str, build: _Build) -> str:
    """`markdown` with its markers rendered; `src_uri` is the page's path inside docs_dir."""
    lines, waiting = (
        [],
        set(),
    )  # the snippets whose GPU note this page already shows
    for line, in_code in markdown_lines(markdown):
        include = SNIPPET_INCLUDE.match(line) if in_code else None
        if include and include.group("key") in build.snippets:
            source = build.snippets[include.group("key")].path.read_text(
                encoding="utf-8"
            )
            code = clean_snippet(source)
            lines += [
                include.group("indent") + code_line
                for code_line in code.split("\n")
            ]
        elif in_code:
            lines.append(line)
        elif TABLE_MARKER.match(line):
            lines += outputs_table(build).split("\n")
        elif GPU_ENVIRONMENT_MARKER.match(line):
            lines += gpu_environment(build).split("\n")
        elif marker := OUTPUT_MARKER.match(line):
            block = _output(
                marker.group("target"),
                marker.group("alt"),
                src_uri,
                build,
                waiting,
            )
            lines += [
                marker.group("indent") + b if b else ""
                for b in block.split("\n")
            ]
        elif OUTPUT_START.match(
            line
        ):  # e.g. a "]" in the alt text ends the marker early
            log.warning(
                "%s: a malformed output marker (alt text may not contain ']'): %s",
                src_uri,
                line.strip(),
            )
            lines.append(line)
        else:
            lines.append(INLINE.sub(lambda m: _inline(m, src_uri, build), line))
    return "\n".join(lines)


def clean_snippet(source: str) -> str:
    """A percent-format script as the pages show it: without its `# %%` / `# %% [markdown]`
    marker lines (a markdown cell's lines are comments already) and without leading or
    trailing blank lines; every other line as it is, so the result runs as the script does."""
    lines = [
        line for line in source.splitlines() if not CELL_MARKER_LINE.match(line)
    ]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def outputs_table(build: _Build) -> str:
    """A Markdown table: each snippet, where and when its output was made, and its state."""
    rows = [
        "| Snippet | Generated on | Date | Commit | State |",
        "|---|---|---|---|---|",
    ]
    for key, snippet in sorted(build.snippets.items()):
        state, meta = build.status(snippet), build.status(snippet).meta
        if meta is None:
            where = date = commit = "–"
        else:
            where = _where(meta) + (
                f", CUDA {meta.get('cuda')}" if meta.get("gpu") else ""
            )
            where += f", torch {meta.get('torch')}, triton {meta.get('triton')}"
            date, commit = short_date(meta), (meta.get("commit") or "none")[:7]
        label = {
            "fresh": "fresh",
            "stale": f"stale: {state.reason}",
            "missing": "missing",
            "waiting-for-gpu": "waits for a GPU run",
        }.get(state.state, state.state)
        rows.append(f"| `{key}` | {where} | {date} | {commit} | {label} |")
    return "\n".join(rows) + "\n"


def _where(meta: dict) -> str:
    """The device an output was produced on: the GPU's name, or "CPU (<model>)"."""
    device = meta.get("device") or "an unknown device"
    return device if meta.get("gpu") else f"CPU ({device})"


def _utc_time(meta: dict) -> str:
    """A meta.json's ISO date as "YYYY-MM-DD HH:MM UTC" (the raw value when it does not parse)."""
    try:
        moment = datetime.datetime.fromisoformat(meta["date"]).astimezone(
            datetime.timezone.utc
        )
    except (KeyError, TypeError, ValueError):
        return str(meta.get("date") or "unknown")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def gpu_environment(build: _Build) -> str:
    """Markdown describing the environment of the most recent output produced on a GPU."""
    runs = [
        (build.status(s).meta, s)
        for s in build.snippets.values()
        if build.status(s).meta and build.status(s).meta.get("gpu")
    ]
    if not runs:
        return _admonition(
            "note",
            "No output has been produced on a GPU yet",
            (
                "Every output on this site so far comes from a CPU run, and the outputs that "
                "only a GPU can produce, such as timings, still wait for one (see the table of "
                "outputs below)."
            ),
        )
    meta, snippet = max(
        runs, key=lambda run: (str(run[0].get("date") or ""), run[1].key)
    )
    commit = meta.get("commit")
    commit = f"`{commit}`" if commit else "none (not a git checkout)"
    if meta.get("dirty"):
        commit += " with uncommitted changes"
    unrecorded = "*not recorded*"
    rows = [
        ("Device", meta.get("device")),
        ("Driver", meta.get("driver")),
        ("CUDA", meta.get("cuda")),
        ("PyTorch", meta.get("torch")),
        ("Triton", meta.get("triton")),
        ("Python", meta.get("python")),
        ("Date", _utc_time(meta)),
        ("Commit", commit),
    ]
    lines = [
        f"The most recent output made on a GPU is that of `{snippet.key}` "
        f"({build.status(snippet).state}). It ran in this environment:",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value or unrecorded} |" for name, value in rows]
    return "\n".join(lines) + "\n"


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


def waiting_note(snippet: Snippet, src_uri: str, build: _Build) -> str:
    """The one note standing for every output of a `# requires: cuda` snippet not yet run on
    a GPU: what the reader will see there and how to produce it."""
    title, prose = docstring(snippet)
    body = [
        f"**{title}.** This part of the page needs a run on a CUDA GPU, which has not "
        "happened yet; its figures and tables appear here after one."
    ]
    if prose:
        body += ["", prose]
    reproduce = build.docs_dir / "reproduce.md"
    how = "the Reproduce page"
    if reproduce.is_file():
        url = posixpath.relpath(
            "reproduce.md", posixpath.dirname(src_uri) or "."
        )
        how = f"[the Reproduce page]({url})"
    body += [
        "",
        f"To produce it, on a machine with a CUDA GPU and a clone of this repository, "
        f"run `{snippet.command}`, or every GPU step at once as {how} describes.",
    ]
    return (
        f'!!! info "Waiting for a GPU run"\n'
        + "\n".join(
            f"    {line}" if line else ""
            for line in "\n".join(body).split("\n")
        )
        + "\n"
    )


def _output(
    target: str,
    alt: str | None,
    src_uri: str,
    build: _Build,
    waiting: set | None = None,
) -> str:
    """The Markdown that replaces one `[[ output: ... ]]` marker.

    `waiting` holds the keys of the snippets whose "Waiting for a GPU run" note the page
    already shows; a later marker of the same snippet renders nothing.
    """
    found = _resolve(target, src_uri, build)
    if isinstance(found, str):
        return _missing(found, src_uri)
    snippet, state, name = found
    if state.state == "waiting-for-gpu":
        waiting = set() if waiting is None else waiting
        if snippet.key in waiting:
            return ""
        waiting.add(snippet.key)
        return waiting_note(snippet, src_uri, build)
    if state.state == "missing":
        return _missing(
            f"{snippet.rel} has no output yet: run `{snippet.command}`", src_uri
        )
    path = build.generated / snippet.key / name
    if not path.is_file():
        return _missing(
            f"the output of {snippet.rel} has no file {name!r}", src_uri
        )
    suffix = path.suffix.lower()
    if suffix in IMAGES and not alt:
        log.warning(
            "%s: the figure %r needs alt text: [[ output: %s | ... ]]",
            src_uri,
            target,
            target,
        )
    blocks = []
    if state.state == "stale":
        gpu = " on a GPU machine" if state.needs_gpu else ""
        blocks.append(
            _admonition(
                "warning",
                "Stale output",
                (
                    f"The sources changed since this output was generated on {short_date(state.meta)} "
                    f"({state.reason}). Regenerate it{gpu} with `{snippet.command}`."
                ),
            )
        )
    url = posixpath.relpath(
        f"generated/{snippet.key}/{name}", posixpath.dirname(src_uri) or "."
    )
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
        raster = suffix == ".svg" and has_raster(
            path.read_text(encoding="utf-8")
        )
        classes = ".generated-figure .raster" if raster else ".generated-figure"
        return f"![{alt}]({url}){{ {classes} }}\n"
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
        elif (
            isinstance(data, list) and part.isdigit() and int(part) < len(data)
        ):
            data = data[int(part)]
        else:
            raise KeyError(part)
    return data


def _inline(match: re.Match, src_uri: str, build: _Build) -> str:
    """The text that replaces one inline match: code spans unchanged, markers rendered."""
    if match.group("code"):
        return match.group(0)
    if match.group("snippet"):
        return _device(match.group("snippet"), src_uri, build)
    target, key = match.group("target").strip(), match.group("key")
    found = _resolve(target, src_uri, build)
    if isinstance(found, str):
        log.warning("%s: %s", src_uri, found)
        return f"**[missing: {target}#{key}]**"
    snippet, state, name = found
    if state.state == "waiting-for-gpu":
        log.info(
            "%s: %s#%s waits for a GPU run of %s",
            src_uri,
            target,
            key,
            snippet.rel,
        )
        return "*(waiting for a GPU run)*"
    path = build.generated / snippet.key / name
    try:
        return format_value(
            _lookup(json.loads(path.read_text(encoding="utf-8")), key)
        )
    except (OSError, ValueError, KeyError) as error:
        log.warning(
            "%s: no value %s#%s (%s: %s); run `%s`",
            src_uri,
            target,
            key,
            type(error).__name__,
            error,
            snippet.command,
        )
        return f"**[missing: {target}#{key}]**"


def _device(key: str, src_uri: str, build: _Build) -> str:
    """The text of one `[[ device: <article>/<stem> ]]` marker."""
    key = key.strip().strip("/")
    snippet = build.snippets.get(key)
    if snippet is None:
        log.warning(
            "%s: no snippet snippets/%s.py for the marker [[ device: %s ]]",
            src_uri,
            key,
            key,
        )
        return f"**[missing: {key}]**"
    state = build.status(snippet)
    if state.state == "waiting-for-gpu":
        return "*waiting for a GPU run*"
    if state.meta is None:
        log.warning(
            "%s: %s has no output yet: run `%s`",
            src_uri,
            snippet.rel,
            snippet.command,
        )
        return f"**[missing: {key}]**"
    return _where(state.meta)


def _image_data_uris(notebook: dict) -> dict[str, tuple[str, bool]]:
    """{data URI as nbconvert writes it into `<img src>`: (alt text, whether it
    holds a raster image, see `has_raster`)} of a notebook's images."""
    found = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            for mime, data in output.get("data", {}).items():
                alt = output.get("metadata", {}).get(mime, {}).get("alt")
                if not mime.startswith("image/") or not alt:
                    continue
                text = "".join(data) if isinstance(data, list) else data
                svg = mime == "image/svg+xml"
                payload = (
                    base64.b64encode(text.encode("utf-8")).decode("ascii")
                    if svg
                    else "".join(text.split())
                )
                found[f"data:{mime};base64,{payload}"] = (
                    alt,
                    svg and has_raster(text),
                )
    return found


def with_notebook_alt_text(html_text: str, notebook: dict) -> str:
    """`html_text` of a rendered notebook with each output image's alt set from
    `notebook`, and the class `raster` on those that hold a raster image (see
    `has_raster`).

    nbconvert's lab template, which mkdocs-jupyter uses, drops the alt text that
    the notebook records in `output.metadata[<mime>]["alt"]`; images are matched
    here by their data URI.
    """
    images = _image_data_uris(notebook)

    def replace(match: re.Match) -> str:
        tag = match.group(0)
        src = IMG_SRC.search(tag)
        found = images.get(html.unescape(src.group("src"))) if src else None
        if found is None:
            return tag
        alt, raster = found
        tag = IMG_ALT.sub("", tag)
        attributes = f' alt="{html.escape(alt, quote=True)}"'
        if raster:
            before = IMG_CLASS.search(tag)
            tag = IMG_CLASS.sub("", tag, count=1)
            kept = before.group("value").split() if before else []
            attributes += f' class="{" ".join(["raster", *kept])}"'
        return tag[:4] + attributes + tag[4:]

    return IMG_TAG.sub(replace, html_text) if images else html_text


class GeneratedOutputsPlugin(BasePlugin):
    """The MkDocs plugin `generated-outputs`: the functions above, called on MkDocs' events.

    List it last under `plugins:` so that it sees the pages after mkdocs-jupyter rendered them.
    """

    def on_config(self, config):
        return on_config(config)

    def on_pre_build(self, config):
        on_pre_build(config)

    def on_page_markdown(self, markdown, page, config, files):
        return on_page_markdown(markdown, page, config, files)

    def on_page_content(self, html, page, config, files):
        return on_page_content(html, page, config, files)

    def on_files(self, files, config):
        self._files = files

    def on_page_context(self, context, page, config, nav):
        return on_page_context(context, page, config, nav, self._files)

    def on_post_build(self, config):
        on_post_build(config)
