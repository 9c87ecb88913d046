"""The companion notebook of an article, assembled from its snippets' recorded
cells.

`docs/generated/<article>/<article>.ipynb` (nbformat 4.5, written with the json
module only): a title cell naming the article, with the article's opening
paragraphs (`article_lead`) and how to run the notebook, then for each snippet
in order:

* the article's prose that introduces it (`article_sections`): the sections of
  `docs/<article>.md` that show the snippet's code or outputs, with the sections
  before them that no earlier snippet took, so that the notebook carries the
  article's paragraphs and display formulas and reads on its own;
* a section of its own: a heading in plain language (the first paragraph of the
  snippet's docstring), the rest of its docstring as prose, its provenance line
  and file name, then the cells that ran with their outputs (its markdown cells
  as prose). A snippet without an output yet contributes its source cells,
  without outputs, and a note saying why.

Headings carry no code, links or math, so that the anchors of mkdocs-jupyter's
table of contents (Python-Markdown's slugs of the heading text) match the ids
nbconvert gives the rendered headings.

Each output image carries its alt text in `metadata[<mime>]["alt"]`, where
nbconvert looks for it: the alt text of the page marker that shows the same file
(`[[ output: <article>/<stem>/<file> | alt ]]` in `docs/*.md`), else "Figure
<file> from <snippet>".
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

from snippets._build.provenance import (
    CELLS_FILE,
    OUTPUT_MARKER,
    Snippet,
    discover,
    figure_alt_texts,
    markdown_lines,
    output_dir,
    provenance_line,
    read_meta,
    status,
)
from snippets._build.runner import parse_cells

KERNELSPEC = {
    "display_name": "Python 3",
    "language": "python",
    "name": "python3",
}
# the text/plain of an image output
IMAGE_NAME = re.compile(r"^<(?P<name>[^<>]+)>$")
RST_LITERAL = re.compile(r"``(?P<code>[^`]+)``")
BULLET = re.compile(r"^\s*[*-]\s")
# the page's inline markers (as the site's hook reads them), outside code spans
INLINE_MARKER = re.compile(
    r"(?P<code>(?P<ticks>`+).*?(?P=ticks))"
    r"|\[\[\s*value:\s*(?P<target>[^\]#]+?)\s*#\s*(?P<key>[^\]\s]+)\s*\]\]"
    r"|\[\[\s*device:\s*(?P<snippet>[^\]\s]+)\s*\]\]",
    re.DOTALL,
)
SECTION = re.compile(r"^## (?P<title>.+)$", re.MULTILINE)
SUBHEADING = re.compile(r"^(?P<level>#{3,6}) (?P<title>.+)$")


def _markdown(cell_id: str, source: str) -> dict:
    """A markdown cell."""
    return {
        "cell_type": "markdown",
        "id": cell_id,
        "metadata": {},
        "source": source,
    }


def article_title(root: Path, article: str) -> str:
    """The article's title: the first heading of `docs/<article>.md`, else its
    folder name.
    """
    page = Path(root) / "docs" / f"{article}.md"
    if page.is_file():
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return article.replace("_", " ").capitalize()


def article_lead(
    root: Path, article: str, generated: Path | None = None
) -> str:
    """The opening paragraphs of `docs/<article>.md` (between its title and its
    first section) as notebook Markdown (see `notebook_markdown`); `generated`
    is where the values the paragraphs quote are read (without it, a paragraph
    that quotes one is left out)."""
    page = Path(root) / "docs" / f"{article}.md"
    if not page.is_file():
        return ""
    text = page.read_text(encoding="utf-8")
    start = re.search(r"^# .*$", text, re.MULTILINE)
    if start is None:
        return ""
    body = text[start.end() :]
    end = SECTION.search(body)
    return notebook_markdown(body[: end.start()] if end else body, generated)


def notebook_markdown(text: str, generated: Path | None = None) -> str:
    """Page Markdown as notebook Markdown, for a reader without the site.

    Kept: paragraphs, lists and display formulas, with math in `$ $` / `$$ $$`
    instead of `\\( \\)` / `\\[ \\]`, links to other pages as their text
    (the notebook is also read on its own), footnote references removed, and
    `###` headings as plain text. The values the text quotes
    (`[[ value: <article>/<stem>/<file>.json#key ]]`) and the devices it names
    (`[[ device: <article>/<stem> ]]`) are read from `generated`; a paragraph
    with one that cannot be read is left out. Left out: what only the site
    renders or what the notebook shows otherwise (output markers, fenced code,
    admonitions and other indented blocks, tables, HTML, attribute lists,
    abbreviations and footnote definitions).
    """
    prose = "\n".join(
        "" if in_code else line for line, in_code in markdown_lines(text)
    )
    kept = []
    for block in re.split(r"\n\s*\n", prose.strip()):
        heading = SUBHEADING.match(block.strip())
        if heading and "\n" not in block.strip():
            title = plain_heading(heading.group("title"))
            kept.append(f"{heading.group('level')} {title}")
            continue
        if (
            not block.strip()
            or block.lstrip()[0] in "<{!?|>#"
            or block.startswith((" ", "\t"))
            or block.lstrip().startswith(("--8<--", "*[", "[^"))
            or any(OUTPUT_MARKER.match(line) for line in block.splitlines())
        ):
            continue
        block = INLINE_MARKER.sub(lambda m: _inline(m, generated), block)
        if "[[" in block:  # a marker that could not be read
            continue
        # footnote references
        block = re.sub(r"\[\^[^\]]+\]", "", block)
        # links: their text
        block = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", block)
        block = re.sub(r"\\\((.+?)\\\)", r"$\1$", block, flags=re.DOTALL)
        block = re.sub(r"\\\[(.+?)\\\]", r"$$\1$$", block, flags=re.DOTALL)
        kept.append(block.strip())
    return "\n\n".join(kept)


def _inline(match: re.Match, generated: Path | None) -> str:
    """The text of one inline match: a code span unchanged, a value or a device
    as the site shows it, a marker that cannot be read unchanged."""
    if match.group("code") or generated is None:
        return match.group(0)
    if match.group("snippet"):
        meta = read_meta(Path(generated) / match.group("snippet").strip("/"))
        return str(meta["device"]) if meta and meta.get("device") else match[0]
    path = Path(generated) / match.group("target").strip()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for part in match.group("key").split("."):
            data = data[int(part) if isinstance(data, list) else part]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return match.group(0)
    return format_value(data)


def format_value(value) -> str:
    """A JSON value as the site's pages quote it: str() for strings, ints and
    bools, 3 significant digits for floats (large floats as integers), JSON for
    lists, objects and null."""
    if isinstance(value, float):
        text = f"{value:.3g}"
        return f"{value:.0f}" if "e+" in text else text
    if isinstance(value, (str, int)):
        return str(value)
    return json.dumps(value)


def article_sections(
    root: Path, article: str, generated: Path | None = None
) -> dict[str, tuple[str, ...]]:
    """The article's prose that introduces each snippet, by snippet stem.

    The sections (`## ` headings) of `docs/<article>.md` are handed out to the
    article's snippets in order: a snippet gets the sections that show its code
    (`--8<-- "snippets/<article>/<stem>.py"`) or its outputs
    (`[[ output: <article>/<stem>/... ]]`) and that no earlier snippet took,
    together with the sections before them that no snippet took (the
    explanation that leads up to it). Each section comes as notebook Markdown
    (`notebook_markdown`) under its heading as plain text. Sections after the
    last snippet's (the package, the sources) are not handed out; a snippet the
    page does not show, or whose sections an earlier snippet took, gets none.
    """
    page = Path(root) / "docs" / f"{article}.md"
    if not page.is_file():
        return {}
    text = page.read_text(encoding="utf-8")
    starts = list(SECTION.finditer(text))
    sections = [
        (m.group("title"), text[m.end() : nxt.start() if nxt else len(text)])
        for m, nxt in zip(starts, starts[1:] + [None])
    ]
    handed, taken = {}, 0
    for snippet in discover(root):
        if snippet.article != article:
            continue
        include = f'"snippets/{article}/{snippet.stem}.py"'
        output = re.compile(
            rf"^[ \t]*\[\[\s*output:\s*{re.escape(snippet.key)}/", re.MULTILINE
        )
        shown = [
            i
            for i, (_, body) in enumerate(sections)
            if i >= taken and (include in body or output.search(body))
        ]
        if not shown:
            continue
        handed[snippet.stem] = tuple(
            f"## {plain_heading(title)}\n\n"
            + notebook_markdown(body, generated)
            for title, body in sections[taken : shown[-1] + 1]
        )
        taken = shown[-1] + 1
    return handed


def _title(name: str, article: str, lead: str = "") -> dict:
    """The first cell: what the notebook is, the article's opening, and how to
    run it.
    """
    return _markdown(
        "title",
        (
            # The site ranks articles above notebooks in the search (the
            # plugin's search boost), so the notebook may carry its article's
            # title.
            f"# Notebook: {plain_heading(name)}\n\n"
            + (f"{lead}\n\n" if lead else "")
            + f"The code and outputs of the article *{name}*, section by "
            "section, one section per script. Generated by `python -m "
            f"snippets` from the scripts in `snippets/{article}/`, with the "
            "outputs of their last run; edit the scripts, not this "
            "notebook.\n\nTo run it you need the `kernels` package: from a "
            "clone of the repository, `pip install -e .` (and `pip install "
            "matplotlib` for the figures). On a machine without a CUDA GPU "
            "the cells run at small sizes."
        ),
    )


def _source_cells(snippet: Snippet) -> list[dict]:
    """The snippet's cells as they are in the file now, without outputs."""
    cells = []
    for cell in parse_cells(snippet.path.read_text(encoding="utf-8")):
        if cell["cell_type"] == "markdown":
            cells.append(
                {
                    "cell_type": "markdown",
                    "metadata": {},
                    "source": cell["source"],
                }
            )
        else:
            cells.append(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "metadata": {},
                    "outputs": [],
                    "source": cell["source"],
                }
            )
    return cells


def plain_heading(text: str) -> str:
    """`text` fit for a heading whose anchor is stable: without code, emphasis
    or math marks.
    """
    text = re.sub(r"\\\((.+?)\\\)", r"\1", text)  # the page's inline math
    text = re.sub(r"\$([^$]*)\$", r"\1", text)
    text = re.sub(r"[`*\\]", "", text)
    return " ".join(text.split()).rstrip(".")


def docstring(snippet: Snippet) -> tuple[str, str]:
    """(title, prose) of a snippet's module docstring: its first paragraph (the
    lines before the first blank one, joined), and the rest as Markdown.

    reST literals (``x``) become Markdown code spans and a bulleted list gets
    the blank line Markdown needs before it. A snippet without a docstring is
    titled after its file name.
    """
    try:
        text = (
            ast.get_docstring(
                ast.parse(snippet.path.read_text(encoding="utf-8"))
            )
            or ""
        )
    except SyntaxError:
        text = ""
    lines = text.strip().splitlines()
    if not lines:
        return snippet.stem.split("_", 1)[-1].replace("_", " ").capitalize(), ""
    first = next((i for i, line in enumerate(lines) if not line.strip()), None)
    first = len(lines) if first is None else first
    title, prose = plain_heading(" ".join(lines[:first])), []
    for line in lines[first:]:
        if (
            BULLET.match(line)
            and prose
            and prose[-1].strip()
            and not BULLET.match(prose[-1])
            and not prose[-1].startswith(" ")
        ):
            prose.append("")
        prose.append(RST_LITERAL.sub(r"`\g<code>`", line))
    return title, "\n".join(prose).strip()


def _is_docstring_cell(cell: dict) -> bool:
    """True for a code cell that holds nothing but the module docstring (shown
    as prose).
    """
    if cell.get("cell_type") != "code":
        return False
    try:
        body = ast.parse(_text(cell.get("source", ""))).body
    except SyntaxError:
        return False
    return (
        len(body) == 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )


def _text(data) -> str:
    """A notebook string field, which nbformat allows as a str or a list of
    lines.
    """
    return "".join(data) if isinstance(data, list) else str(data)


def with_alt_text(cell: dict, snippet: Snippet, alts: dict[str, str]) -> dict:
    """`cell` with the alt text of each output image in
    `output.metadata[<mime>]["alt"]`.

    `alts` maps `<article>/<stem>/<file>` to the alt text of the page marker
    showing it; an image no marker shows gets "Figure <file> from <snippet>".
    """
    outputs = []
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        images = [mime for mime in data if mime.startswith("image/")]
        if images:
            name = IMAGE_NAME.match(_text(data.get("text/plain", "")).strip())
            name = name.group("name") if name else "output"
            alt = (
                alts.get(f"{snippet.key}/{name}")
                or f"Figure {name} from {snippet.rel}"
            )
            metadata = dict(output.get("metadata", {}))
            for mime in images:
                metadata[mime] = {**metadata.get(mime, {}), "alt": alt}
            output = {**output, "metadata": metadata}
        outputs.append(output)
    return {**cell, "outputs": outputs} if "outputs" in cell else cell


def snippet_cells(
    snippet: Snippet,
    generated: Path,
    hashes: dict | None = None,
    alts: dict[str, str] | None = None,
    level: int = 2,
) -> list[dict]:
    """The notebook cells of one snippet: a heading with provenance, then its
    cells.

    `hashes` is a cache of file hashes (see `status`); `alts` are the alt texts
    of the figures shown on the pages (`figure_alt_texts`); `level` is the
    heading's level (3 under the article's section that introduces it).
    """
    alts = {} if alts is None else alts
    state = status(snippet, generated, hashes)
    title, prose = docstring(snippet)
    heading = f"{'#' * level} {title}\n\n" + (f"{prose}\n\n" if prose else "")
    heading += f"Script: `{snippet.rel}`. "
    if state.meta is None:
        why = (
            "It requires CUDA and waits for a GPU run"
            if state.state == "waiting-for-gpu"
            else "It has not been run yet"
        )
        heading += f"*No outputs yet.* {why}: `{snippet.command}`."
        cells = _source_cells(snippet)
    else:
        heading += f"*{provenance_line(state.meta)}*"
        if state.state == "stale":
            heading += (
                f"\n\n**Stale output:** {state.reason}. Regenerate: "
                f"`{snippet.command}`."
            )
        path = output_dir(generated, snippet) / CELLS_FILE
        cells = (
            json.loads(path.read_text(encoding="utf-8"))
            if path.is_file()
            else _source_cells(snippet)
        )
    body = [_markdown(f"{snippet.stem}-about"[:64], heading)]
    # shown above as the section's prose
    if cells and _is_docstring_cell(cells[0]):
        cells = cells[1:]
    for number, cell in enumerate(cells, start=1):
        body.append(
            {
                **with_alt_text(cell, snippet, alts),
                "id": f"{snippet.stem}-{number}"[:64],
            }
        )
    return body


def notebook(root: Path, generated: Path, article: str) -> dict:
    """The companion notebook of `article` as a JSON-ready dict."""
    lead = article_lead(root, article, generated)
    cells = [_title(article_title(root, article), article, lead)]
    alts, hashes, headings = figure_alt_texts(Path(root) / "docs"), {}, set()
    sections = article_sections(root, article, generated)
    introduced = False  # whether the article's prose introduced a snippet yet
    for snippet in discover(root):
        if snippet.article != article:
            continue
        prose = [
            _markdown(f"{snippet.stem}-article-{number}"[:64], text)
            for number, text in enumerate(sections.get(snippet.stem, ()), 1)
        ]
        introduced = introduced or bool(prose)
        # under the article's section, or a section of its own when the page
        # has introduced none of the snippets
        level = 3 if introduced else 2
        section = snippet_cells(snippet, generated, hashes, alts, level)
        for number, cell in enumerate(prose + section):
            # Two headings with one text would share an anchor: tell them
            # apart.
            first, _, rest = cell["source"].partition("\n")
            if first in headings:
                label = snippet.stem + (f", {number + 1}" if prose else "")
                cell["source"] = f"{first} ({label})\n{rest}"
            headings.add(cell["source"].partition("\n")[0])
        cells += prose + section
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_notebook(root: Path, generated: Path, article: str) -> Path:
    """Write `<generated>/<article>/<article>.ipynb` (through a temporary file);
    return its path.
    """
    path = Path(generated) / article / f"{article}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(
            notebook(root, generated, article),
            indent=1,
            ensure_ascii=False,
            sort_keys=True,
        )
        + "\n"
    )
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path
