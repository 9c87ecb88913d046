"""The built site: a strict MkDocs build, then every page in headless Chromium.

The site is built into a temporary folder, with a `torch` that cannot be imported (building
the site, the API page included, must never import it), and served on 127.0.0.1 by the
standard library's HTTP server. Debian's chromium, driven by Playwright, opens every page and
checks that it works offline and renders completely: no console error, no failed request, no
request to another host, every image loaded and described by alt text, every formula typeset
by MathJax without an error and no raw TeX left in the text. It does so as two readers: one on
a phone (390 px wide, dark palette, chosen with the palette toggle) and one on a desktop
(1280 px, light palette); for both, every display formula shows at its full size, scrolling
inside its own box when it is wider than the screen, no page is wider than the screen, no
number in a table breaks across lines, every link within a page finds its anchor, and in the
dark palette the figures are inverted; a notebook page has a title of its own, headings in
words (not file paths), a table of contents with a title for each entry, and code cells that
take the column. It also downloads each companion notebook through its page's button, finds
each article by typing its title into the search box (and the FlashAttention article by
`flash_attention`, the linear-attention one by `chunkwise`), and reads the API page. Without a
browser it also checks that the search index holds no notebook prompts or button text and
that the snippets shown carry no `# %%` cell markers, and that every generated figure opens
at full size (a lightbox link to the figure file); at 1280 px it checks that no code block of an
article is wider than its column. Without a browser it checks
that each article has one name (navigation, page title, home page), that the snippets on the
pages are open, that each article shows its reading time and that the headline table of the
home page reads honestly.

Without chromium the browser tests fail under CI and skip elsewhere, saying how to
install it.
"""

import ast
import functools
import html
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The site is built as the Pages workflow builds it, with the repository's address set (an
# example one here), so that the links made from it can be checked.
REPO_URL = "https://github.com/example/fast-llm-kernels"
DOCS = ROOT / "docs"
MATHJAX = DOCS / "assets" / "mathjax" / "tex-svg.js"
# Pages of the site that are not articles; every other Markdown page in docs/ is one.
SITE_PAGES = {"index.md", "reproduce.md", "api.md"}
# The alt text nbconvert gives an image that has none.
NBCONVERT_NO_ALT = "No description has been provided for this image"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MARKERS = re.compile(r"\[\[\s*(output|value)\s*:")
# Code on a page may show a marker as an example; the hook leaves those alone.
CODE = re.compile(r"<(pre|code)\b.*?</\1>", re.DOTALL)
# Delimiters of TeX that MathJax should have replaced.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$")
# Inline $...$ as notebooks write it.
RAW_DOLLAR_MATH = re.compile(r"\$[^$\s][^$]*\$")

# Collects the text a reader sees, outside code, scripts and typeset formulas.
VISIBLE_TEXT_JS = """
(selector) => {
  const root = document.querySelector(selector);
  if (!root) return "";
  // .clipboard-copy-txt: the hidden copy of a notebook cell's code that its copy button copies.
  const skip = "code, pre, script, style, noscript, textarea, mjx-container, .md-search, .clipboard-copy-txt";
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement.closest(skip)) parts.push(node.nodeValue);
  }
  return parts.join(" ");
}
"""

# Resolves when every image has loaded or failed (lazy images are asked to load now).
IMAGES_SETTLED_JS = """
async () => {
  await Promise.all(Array.from(document.images, (img) => {
    img.loading = "eager";
    if (img.complete) return null;
    return new Promise((resolve) => {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", resolve, { once: true });
    });
  }));
  return Array.from(document.images)
    .filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.currentSrc || img.src);
}
"""

# True once MathJax has finished the current page (see docs/javascripts/mathjax.js).
MATH_DONE_JS = """
async () => {
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) return false;
  await MathJax.startup.promise;
  const math = document.querySelectorAll(".arithmatex");
  return Array.from(math).every((el) => el.querySelector("mjx-container"));
}
"""

# Images with an empty alt text, or the one nbconvert writes when it found none.
IMAGES_WITHOUT_ALT_JS = """
(placeholder) => Array.from(document.images)
  .filter((img) => !img.alt.trim() || img.alt.trim() === placeholder)
  .map((img) => (img.currentSrc || img.src).slice(0, 80))
"""

# The first column of the table under "Parameters:" in the API entry with heading id `id`.
API_PARAMETERS_JS = """
(id) => {
  const heading = document.getElementById(id);
  const entry = heading && heading.closest(".doc-object");
  if (!entry) return null;
  const sections = Array.from(entry.querySelectorAll(".doc-section-title"));
  const title = sections.find((el) => el.textContent.trim() === "Parameters:");
  const table = title && title.parentElement.nextElementSibling;
  if (!table) return [];
  return Array.from(table.querySelectorAll("tbody tr td:first-child"), (td) => td.textContent.trim());
}
"""

MATH_ERRORS_JS = """
() => Array.from(
  document.querySelectorAll('mjx-merror, merror, [data-mml-node="merror"], [data-mjx-error]'),
  (el) => el.getAttribute("data-mjx-error") || el.textContent
)
"""


# What a reader on a screen of the current width would see go wrong: a display formula that
# is hidden, shrunk below its typeset size or spills out of its box onto the page; a page that
# scrolls sideways as a whole; a number in a table broken across two lines. Formulas inside a
# closed <details> are not shown to anyone and are skipped.
LAYOUT_JS = r"""
() => {
  const width = document.documentElement.clientWidth;
  // A formula is named by its TeX source (MathJax keeps it), else by its text.
  const label = (el) => {
    const items = window.MathJax && MathJax.startup.document.getMathItemsWithin(el);
    const text = items && items.length ? items[0].math : el.textContent || "";
    return text.replace(/\s+/g, " ").trim().slice(0, 60);
  };
  const formulas = { count: 0, hidden: [], shrunk: [], outside: [] };
  for (const container of document.querySelectorAll('mjx-container[display="true"]')) {
    if (container.closest("details:not([open])")) continue;
    formulas.count += 1;
    const svg = container.querySelector("svg");
    const box = svg ? svg.getBoundingClientRect() : null;
    if (!box || box.width < 4 || box.height < 4) {
      formulas.hidden.push(label(container));
      continue;
    }
    if (box.width < 0.98 * svg.width.baseVal.value) {
      formulas.shrunk.push(`${label(container)} (${Math.round(box.width)} of ${Math.round(svg.width.baseVal.value)} px)`);
    }
    const scroller = container.closest("div.arithmatex") || container;
    const frame = scroller.getBoundingClientRect();
    if (frame.left < -1 || frame.right > width + 1) {
      formulas.outside.push(`${label(container)} (${Math.round(frame.left)} to ${Math.round(frame.right)} px)`);
    }
  }
  const NUMBER = /[-−+]?\d[\d,]*(?:\.\d+)?(?:e[-+−]?\d+)?(?:\s*±\s*\d[\d,]*(?:\.\d+)?(?:e[-+−]?\d+)?)?/g;
  const broken = [];
  for (const cell of document.querySelectorAll("article table td, article table th")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const match of node.nodeValue.matchAll(NUMBER)) {
        if (match[0].length < 3) continue;
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        const lines = new Set(Array.from(range.getClientRects(), (rect) => Math.round(rect.bottom)));
        if (lines.size > 1) broken.push(match[0]);
      }
    }
  }
  return {
    width,
    pageWidth: document.documentElement.scrollWidth,
    formulas,
    broken,
    scheme: document.body.getAttribute("data-md-color-scheme"),
  };
}
"""

# Figures (and notebook output images) in the wrong colours for the dark palette: a plot left
# black on white, or a figure with a raster image (class `raster`, a heatmap) inverted into
# colours its colour bar does not name.
WRONG_COLOURS_JS = """
() => Array.from(document.querySelectorAll(".generated-figure, .jp-OutputArea-output img"))
  .filter((img) => getComputedStyle(img).filter.includes("invert")
    === img.classList.contains("raster"))
  .map((img) => (img.classList.contains("raster") ? "inverted raster " : "plain plot ")
    + (img.currentSrc || img.src).slice(-60))
"""

# The two readers of the browser tests: (width, height, palette chosen with the toggle).
# Links within the page (the table of contents, permalinks, footnotes) whose target is missing.
DEAD_ANCHORS_JS = """
() => [...document.querySelectorAll('a[href*="#"]')]
  .filter((a) => {
    const url = new URL(a.href, location.href);
    return url.origin === location.origin && url.pathname === location.pathname
      && url.hash.length > 1;
  })
  .map((a) => decodeURIComponent(new URL(a.href, location.href).hash.slice(1)))
  .filter((id) => !document.getElementById(id))
"""
# On a notebook page: its title, its headings, its table of contents and the room for code.
NOTEBOOK_JS = """
() => {
  const wrapper = document.querySelector('.jupyter-wrapper');
  if (!wrapper) return null;
  const text = (e) => e.textContent.replace('\u00b6', '').trim();
  const column = document.querySelector('.md-content__inner').getBoundingClientRect().width;
  const editors = [...wrapper.querySelectorAll('.jp-InputArea-editor')]
    .map((e) => e.getBoundingClientRect().width);
  return {
    headings: [...wrapper.querySelectorAll('h1, h2, h3')].map(text),
    toc: [...document.querySelectorAll('.md-sidebar--secondary .md-nav__link')]
      .map((a) => [a.getAttribute('href'), text(a)]),
    narrowest: editors.length ? Math.min(...editors) / column : null,
  };
}
"""
FILE_PATH = re.compile(r"\b[\w.-]+/[\w./-]*\.(py|ipynb|svg|md|json|txt)\b")
GENERIC_TITLES = {"notebook", "companion notebook"}
READERS = {
    "phone-390px-dark": (390, 844, "slate"),
    "desktop-1280px-light": (1280, 900, "default"),
}


# --------------------------------------------------------------------------- build


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    """Ignores clients that hang up early (the browser closing a page mid-request)."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder served on 127.0.0.1 from a thread, and its address."""
    folder = tmp_path_factory.mktemp("site")
    server = QuietServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def articles():
    """(page, title) of every article: each Markdown page in docs/ but the site's own pages,
    with the text of its first `# ` heading."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS)
        if (
            rel.parts[0] in ("generated", "assets")
            or rel.as_posix() in SITE_PAGES
        ):
            continue
        headings = [
            line[2:].strip()
            for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("# ")
        ]
        found.append((rel.as_posix(), headings[0] if headings else None))
    return found


def page_url(markdown_page: str) -> str:
    """The path, relative to the site root, that MkDocs gives a Markdown page."""
    stem = markdown_page.removesuffix(".md")
    if stem == "index":
        return ""
    return stem.removesuffix("/index") + "/"


@pytest.fixture(scope="module")
def site_dir(served, tmp_path_factory):
    """The site built with `mkdocs build --strict` into the served folder, for its address,
    with `REPO_URL` set as the Pages workflow sets it.

    A `torch` that raises when imported comes first on the path: the build must not import it.
    """
    site, url = served
    poisoned = tmp_path_factory.mktemp("no-torch")
    (poisoned / "torch").mkdir()
    (poisoned / "torch" / "__init__.py").write_text(
        'raise ImportError("building the site must not import torch")\n'
    )
    path = os.pathsep.join(
        p for p in (str(poisoned), os.environ.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "SITE_URL": url,
            "PYTHONPATH": path,
            "REPO_URL": REPO_URL,
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    )
    return site


@pytest.fixture(scope="module")
def base_url(served, site_dir):
    """The address of the built site."""
    return served[1]


@pytest.fixture(scope="module")
def pages(site_dir):
    """Every HTML page of the built site, as paths relative to the site folder."""
    found = sorted(
        path.relative_to(site_dir).as_posix()
        for path in site_dir.rglob("*.html")
        if path.name != "404.html"
        and not path.relative_to(site_dir).parts[0] == "assets"
    )
    assert "index.html" in found, (
        f"the built site has no home page; pages: {found}"
    )
    return found


def test_mathjax_is_installed():
    assert MATHJAX.is_file(), (
        f"MathJax is missing at {MATHJAX.relative_to(ROOT)}: `make mathjax` (or `make test`) "
        "installs it from the npm registry"
    )


def test_no_marker_left_unrendered(site_dir, pages):
    leftovers = {
        page: sorted(
            set(
                MARKERS.findall(
                    CODE.sub("", (site_dir / page).read_text(encoding="utf-8"))
                )
            )
        )
        for page in pages
    }
    leftovers = {page: kinds for page, kinds in leftovers.items() if kinds}
    assert not leftovers, (
        f"raw [[ output: / [[ value: markers left in the built pages: {leftovers}"
    )


def test_every_article_has_a_title():
    found = articles()
    assert found, "no article pages in docs/"
    untitled = [page for page, title in found if not title]
    assert not untitled, f"articles without a '# ' title: {untitled}"


def test_notebooks_are_offered_as_downloads(site_dir, pages):
    """Each rendered notebook page links its .ipynb, and the file sits beside the page."""
    notebook_pages = [
        page
        for page in pages
        if "jupyter-wrapper" in (site_dir / page).read_text(encoding="utf-8")
    ]
    for page in notebook_pages:
        html = (site_dir / page).read_text(encoding="utf-8")
        links = re.findall(r'href="([^"/]+\.ipynb)"[^>]*\bdownload=', html)
        assert links, f"{page}: no download link to its notebook"
        for link in links:
            assert (site_dir / page).parent.joinpath(link).is_file(), (
                f"{page}: {link} is not in the site"
            )


class PageText(html.parser.HTMLParser):
    """The parts of a built page that these tests read: its <title>, the text of every link
    in the page's <article> (href, text), the summary of every <details> with whether it is open, and the text of
    every table row, each as plain text with its whitespace collapsed."""

    def __init__(self, text: str):
        super().__init__()
        self.title, self.links, self.details, self.rows = "", [], [], []
        self._open = []  # [tag, attrs, text parts] of the elements being read
        self._in_article = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self._in_article += tag == "article"
        if tag in ("title", "a", "summary", "tr"):
            self._open.append([tag, dict(attrs), []])
        if tag == "details":
            self.details.append([dict(attrs).get("open") is not None, None])

    def handle_endtag(self, tag):
        self._in_article -= tag == "article"
        if not self._open or self._open[-1][0] != tag:
            return
        _, attrs, parts = self._open.pop()
        text = " ".join("".join(parts).split())
        if tag == "title":
            self.title = text
        elif tag == "a" and self._in_article:
            self.links.append((attrs.get("href", ""), text))
        elif tag == "summary" and self.details and self.details[-1][1] is None:
            self.details[-1][1] = text
        elif tag == "tr":
            self.rows.append(text)

    def handle_data(self, data):
        for element in self._open:
            element[2].append(data)


def built_page(site_dir, markdown_page: str) -> PageText:
    """The built page of a Markdown page (or of a notebook path without its .ipynb)."""
    return PageText(
        (site_dir / page_url(markdown_page) / "index.html").read_text(
            encoding="utf-8"
        )
    )


def site_title(page: PageText) -> str:
    """The page's own title: its <title> without the site name that Material appends."""
    return page.title.rsplit(" - ", 1)[0]


def test_each_article_has_one_name(site_dir):
    """The navigation (which titles the browser tab, the footer and the search results), the
    page's heading and every link from the home page's text to the article (without a
    fragment) give the article the same name."""
    home = built_page(site_dir, "index.md")
    for article, heading in articles():
        page = built_page(site_dir, article)
        assert site_title(page) == heading, (
            f"{article}: the navigation calls it {site_title(page)!r}, its heading {heading!r}"
        )
        href = page_url(article)
        names = {
            text
            for link, text in home.links
            if link in (href, "./" + href) and text
        }
        assert names, f"the home page does not link to {article}"
        assert names == {heading}, (
            f"the home page links to {article} as {sorted(names)}, its heading is {heading!r}"
        )


def test_each_notebook_has_a_title_of_its_own(site_dir):
    """Companion notebooks are named after their article in the navigation, the browser tab,
    the footer and the search results: no two share a title, and none is a bare "notebook"."""
    titles = {}
    for notebook in sorted((DOCS / "generated").glob("*/*.ipynb")):
        rel = notebook.relative_to(DOCS).with_suffix("").as_posix()
        titles[rel] = site_title(built_page(site_dir, rel + ".md"))
    assert titles, "no companion notebook in docs/generated"
    generic = {
        rel: title
        for rel, title in titles.items()
        if title.lower().removeprefix("companion ").removesuffix("s")
        in ("notebook", "")
    }
    assert not generic, f"notebooks without a descriptive title: {generic}"
    shared = {
        title
        for title in titles.values()
        if list(titles.values()).count(title) > 1
    }
    assert not shared, f"notebooks sharing a title: {sorted(shared)}"


def test_snippets_are_shown_open(site_dir):
    """The code that the prose talks about, the snippet boxes, starts open."""
    closed = []
    count = 0
    for article, _ in articles():
        for is_open, summary in built_page(site_dir, article).details:
            if summary and summary.startswith("Snippet:"):
                count += 1
                if not is_open:
                    closed.append(f"{article}: {summary}")
    assert count, "no 'Snippet:' box on any article"
    assert not closed, f"snippet boxes that start closed: {closed}"


READING_TIME = re.compile(
    r'<p class="reading-time" title="(?P<words>\d+) words of prose, at 200 words a minute">'
    r".*?<span>(?P<minutes>\d+) min read</span>",
    re.DOTALL,
)


def test_articles_show_their_reading_time(site_dir, pages):
    """Each article says, under its title, how long it takes to read: its prose (code aside) at
    200 words a minute. No other page does."""
    article_pages = {
        page_url(article) + "index.html" for article, _ in articles()
    }
    for name in pages:
        text = (site_dir / name).read_text(encoding="utf-8")
        found = READING_TIME.findall(text)
        if name not in article_pages:
            assert not found, (
                f"{name} is not an article but shows a reading time"
            )
            continue
        assert len(found) == 1, (
            f"{name}: {len(found)} reading times, expected one"
        )
        words, minutes = (int(n) for n in found[0])
        assert minutes == max(1, round(words / 200)), (
            f"{name}: {minutes} min for {words} words"
        )
        markdown = (
            (DOCS / name.removesuffix("/index.html"))
            .with_suffix(".md")
            .read_text(encoding="utf-8")
        )
        prose = re.sub(
            r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE
        )
        assert (
            0.5 * len(prose.split()) < words < 2 * len(prose.split()) + 500
        ), (
            f"{name}: {words} words of prose counted, the Markdown has {len(prose.split())}"
        )
        heading_end = text.index("</h1>")
        assert text.index('class="reading-time"') - heading_end < 200, (
            f"{name}: the reading time is not under the title"
        )


def test_headline_results_read_honestly(site_dir):
    """The home page's headline tables: timings only from snippets that need a GPU, in their own
    table; no row says twice that it waits for a GPU run; no device name repeated row after row."""
    markdown = (DOCS / "index.md").read_text(encoding="utf-8")
    section = markdown.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    tables = [
        block for block in re.split(r"\n(?=###)", section) if "|---" in block
    ]
    assert len(tables) == 2, (
        "expected two headline tables: results that need no GPU, and speed"
    )
    value = re.compile(r"\[\[\s*(?:value|device):\s*([^/\]\s]+/[^/\]\s#]+)")

    def needs_gpu(key):
        return "# requires: cuda" in (
            ROOT / "snippets" / f"{key}.py"
        ).read_text(encoding="utf-8")

    no_gpu, speed = (set(value.findall(table)) for table in tables)
    assert speed and all(needs_gpu(key) for key in speed), (
        f"the speed table shows results of snippets that run without a GPU: "
        f"{sorted(k for k in speed if not needs_gpu(k))}"
    )
    assert no_gpu and not any(needs_gpu(key) for key in no_gpu), (
        f"the first table shows results that need a GPU: {sorted(k for k in no_gpu if needs_gpu(k))}"
    )
    rows = built_page(site_dir, "index.md").rows
    for row in rows:
        assert row.count("waiting for a GPU run") <= 1, (
            f"a headline row repeats 'waiting for a GPU run': {row}"
        )
    devices = {
        json.loads(meta.read_text(encoding="utf-8")).get("device")
        for meta in (DOCS / "generated").glob("*/*/meta.json")
    }
    for device in filter(None, devices):
        repeated = [row for row in rows if device in row]
        assert len(repeated) <= 1, (
            f"{len(repeated)} table rows on the home page name {device!r}"
        )


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright."""
    executable = shutil.which("chromium")
    if executable is None:
        message = (
            "chromium is not installed: `apt-get install chromium` (Debian), "
            "or run `make test`, which installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class PageWatch:
    """Records what went wrong while a page loaded: console errors, failed requests, other hosts."""

    def __init__(self, page):
        self.problems = []
        page.on("console", self._on_console)
        page.on(
            "pageerror",
            lambda error: self.problems.append(f"page error: {error}"),
        )
        page.on(
            "requestfailed",
            lambda request: self.problems.append(
                f"request failed: {request.url} ({request.failure})"
            ),
        )
        page.on("response", self._on_response)
        page.route("**/*", self._route)

    def _on_console(self, message):
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def _on_response(self, response):
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def _route(self, route):
        """Lets requests to the local server through and blocks (and records) any other."""
        url = urlsplit(route.request.url)
        if (
            url.scheme in ("data", "blob", "about")
            or url.hostname == "127.0.0.1"
        ):
            route.continue_()
        else:
            self.problems.append(
                f"request to another host: {route.request.url}"
            )
            route.abort()


@pytest.fixture
def context(browser):
    """A fresh browser context (its own cache and storage), closed after the test."""
    context = browser.new_context()
    yield context
    context.close()


def check_rendered(page, watch, name):
    """Asserts that the page open in `page` rendered completely and cleanly."""
    page.wait_for_function(MATH_DONE_JS, timeout=20_000)
    math_errors = page.evaluate(MATH_ERRORS_JS)
    broken_images = page.evaluate(IMAGES_SETTLED_JS)
    undescribed = page.evaluate(IMAGES_WITHOUT_ALT_JS, NBCONVERT_NO_ALT)
    text = page.evaluate(VISIBLE_TEXT_JS, "body")
    notebook_text = page.evaluate(VISIBLE_TEXT_JS, ".jupyter-wrapper")
    title = page.title().strip()
    heading = page.evaluate(
        "() => (document.querySelector('article h1') || {}).textContent || ''"
    ).strip()

    assert not watch.problems, f"{name}: " + "; ".join(watch.problems)
    assert not math_errors, f"{name}: MathJax errors: {math_errors}"
    assert not broken_images, (
        f"{name}: images that did not load: {broken_images}"
    )
    assert not undescribed, f"{name}: images without alt text: {undescribed}"
    raw = RAW_TEX.findall(text) + RAW_DOLLAR_MATH.findall(notebook_text)
    assert not raw, f"{name}: raw TeX left in the visible text: {raw[:5]}"
    assert title, f"{name}: the page has no <title>"
    assert heading, f"{name}: the page has no <h1> heading"


def check_anchors_and_notebook(page, name, width):
    """Asserts that every link within the page open in `page` finds its target, and that a
    notebook page reads as a document: a title of its own, headings in words, a table of
    contents of its headings, and code that takes (nearly) the whole column."""
    dead = page.evaluate(DEAD_ANCHORS_JS)
    assert not dead, (
        f"{name} at {width} px: links to anchors that are not on the page: {dead[:5]}"
    )
    notebook = page.evaluate(NOTEBOOK_JS)
    if notebook is None:
        return
    headings = notebook["headings"]
    assert headings and headings[0].lower() not in GENERIC_TITLES, (
        f"{name}: the notebook's title is {headings[:1]}"
    )
    paths = [h for h in headings if FILE_PATH.search(h) or not h]
    assert not paths, (
        f"{name}: notebook headings that are file paths or empty: {paths[:5]}"
    )
    blank = [href for href, title in notebook["toc"] if not title]
    assert notebook["toc"] and not blank, (
        f"{name}: the table of contents is empty or has entries without a title: {blank[:5]}"
    )
    if notebook["narrowest"] is not None:
        assert notebook["narrowest"] >= 0.9, (
            f"{name} at {width} px: a code cell has {notebook['narrowest']:.0%} of the column"
        )


def check_layout(page, name, scheme):
    """Asserts that the page open in `page` fits its screen: formulas, tables and palette."""
    layout = page.evaluate(LAYOUT_JS)
    formulas = layout["formulas"]
    assert not formulas["hidden"], (
        f"{name} at {layout['width']} px: display formulas with no visible size: {formulas['hidden'][:5]}"
    )
    assert not formulas["shrunk"], (
        f"{name} at {layout['width']} px: display formulas shrunk below their size: {formulas['shrunk'][:5]}"
    )
    assert not formulas["outside"], (
        f"{name} at {layout['width']} px: display formulas wider than the screen that do not scroll "
        f"inside their own box: {formulas['outside'][:5]}"
    )
    assert layout["pageWidth"] <= layout["width"], (
        f"{name} at {layout['width']} px: the page is {layout['pageWidth']} px wide and scrolls sideways"
    )
    assert not layout["broken"], (
        f"{name} at {layout['width']} px: numbers broken across lines in a table: {layout['broken'][:5]}"
    )
    assert layout["scheme"] == scheme, (
        f"{name}: the palette is {layout['scheme']!r}, not {scheme!r}"
    )
    if scheme == "slate":
        wrong = page.evaluate(WRONG_COLOURS_JS)
        assert not wrong, (
            f"{name}: figures in the wrong colours for the dark palette: {wrong[:5]}"
        )
    return formulas["count"]


@pytest.mark.parametrize("reader", list(READERS))
def test_every_page_renders_for_each_reader(browser, base_url, pages, reader):
    """Every page, at a phone's width in the dark palette and at a desktop's in the light one:
    it renders completely and offline, and it fits its screen (see check_layout)."""
    width, height, scheme = READERS[reader]
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(base_url, wait_until="load")
        if scheme != "default":
            # The reader's choice, with the toggle in the header; Material keeps it for every page.
            page.click(f'form[data-md-component="palette"] label:visible')
        assert (
            page.evaluate("() => document.body.dataset.mdColorScheme") == scheme
        ), f"the palette toggle did not switch to {scheme!r}"
        page.close()
        formulas = 0
        for name in pages:
            page = context.new_page()
            watch = PageWatch(page)
            page.goto(base_url + name, wait_until="load")
            check_rendered(page, watch, name)
            formulas += check_layout(page, name, scheme)
            check_anchors_and_notebook(page, name, width)
            page.close()
        assert formulas, (
            "no display formula on the whole site: the formula checks checked nothing"
        )
    finally:
        context.close()


def test_notebook_download_buttons_give_notebooks_with_outputs(
    context, base_url, site_dir, pages
):
    """The button on each notebook page downloads an nbformat 4 notebook with executed code."""
    nbformat = pytest.importorskip("nbformat")
    notebook_pages = [
        p
        for p in pages
        if "jupyter-wrapper" in (site_dir / p).read_text(encoding="utf-8")
    ]
    assert notebook_pages, "the site has no notebook page"
    for name in notebook_pages:
        page = context.new_page()
        page.goto(base_url + name, wait_until="load")
        with page.expect_download(timeout=20_000) as download:
            page.click("a.notebook-download")
        text = Path(download.value.path()).read_text(encoding="utf-8")
        data = json.loads(text)
        assert data.get("nbformat") == 4, (
            f"{name}: the download is not an nbformat 4 notebook"
        )
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
        executed = [
            c
            for c in notebook.cells
            if c.cell_type == "code" and c.get("outputs")
        ]
        assert executed, (
            f"{name}: the downloaded notebook has no code cell with outputs"
        )
        page.close()


@pytest.mark.parametrize("article, title", articles())
def test_search_finds_each_article_by_its_title(
    context, base_url, article, title
):
    """Typing an article's title into the search box lists that article first."""
    page = context.new_page()
    watch = PageWatch(page)
    page.goto(base_url, wait_until="load")
    page.click("input.md-search__input")
    # The whole title at once, then one key press: Material searches on keyup, so this runs a
    # single search, for the whole title (typing it key by key would race partial searches).
    page.fill("input.md-search__input", title)
    page.press("input.md-search__input", "End")
    first = page.locator(
        ".md-search-result__item > a.md-search-result__link"
    ).first
    first.wait_for(timeout=20_000)
    href = urlsplit(first.evaluate("(a) => a.href"))
    assert href.path == urlsplit(base_url + page_url(article)).path, (
        f"searching for {title!r}: the first result links to {href.path}, not to {article}"
    )
    assert not watch.problems, "; ".join(watch.problems)
    page.close()


@pytest.mark.parametrize(
    "query, article",
    [
        (
            "flash_attention",
            "flash_attention.md",
        ),  # the name of the op and of its snippets
        ("chunkwise", "linear_attention.md"),  # the article writes "chunk-wise"
    ],
)
def test_search_finds_an_article_by_its_code_name_or_unhyphenated(
    context, base_url, query, article
):
    """Searching for an op's name or a hyphenated word written without its hyphen lists the
    article first, above its notebook and the pages that mention it."""
    page = context.new_page()
    page.goto(base_url, wait_until="load")
    page.click("input.md-search__input")
    page.fill("input.md-search__input", query)
    page.press("input.md-search__input", "End")
    first = page.locator(
        ".md-search-result__item > a.md-search-result__link"
    ).first
    first.wait_for(timeout=20_000)
    href = urlsplit(first.evaluate("(a) => a.href"))
    assert href.path == urlsplit(base_url + page_url(article)).path, (
        f"searching for {query!r}: the first result links to {href.path}, not to {article}"
    )
    page.close()


def test_search_index_holds_no_notebook_prompts_or_buttons(site_dir):
    """The notebooks' "In [n]:" prompts, copy buttons and "¶" links are not in the index."""
    index = json.loads(
        (site_dir / "search" / "search_index.json").read_text(encoding="utf-8")
    )
    notebooks = [
        d for d in index["docs"] if d["location"].startswith("generated/")
    ]
    assert notebooks, "no notebook page in the search index"
    noise = [
        d["location"]
        for d in notebooks
        if re.search(r"\bIn \[\d*\]:|Copied!|\u00b6", d["title"] + d["text"])
    ]
    assert not noise, (
        f"notebook entries with prompts or button text: {noise[:5]}"
    )


def test_snippets_on_pages_show_clean_code(site_dir):
    """The snippets the articles show carry no `# %%` cell markers, in the code shown and in
    the text the copy button copies (the same element's text)."""
    count, marked = 0, []
    for article, _ in articles():
        text = (site_dir / page_url(article) / "index.html").read_text(
            encoding="utf-8"
        )
        for block in re.findall(r"<pre\b.*?</pre>", text, re.DOTALL):
            code = html.unescape(re.sub(r"<[^>]+>", "", block))
            if "import" in code:
                count += 1
            if re.search(r"^# %%", code, re.MULTILINE):
                marked.append(f"{article}: {code.strip().splitlines()[0][:60]}")
    assert count, "no code block on any article"
    assert not marked, f"code blocks with cell markers: {marked[:5]}"


def test_api_page_documents_flash_attention_with_its_args(context, base_url):
    """The API page has an entry for kernels.flash_attention.flash_attention with a table of its
    parameters, one row per argument of its signature, and its Returns and Raises sections."""
    source = (ROOT / "kernels" / "flash_attention" / "api.py").read_text(
        encoding="utf-8"
    )
    function = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "flash_attention"
    )
    arguments = [
        a.arg
        for a in function.args.posonlyargs
        + function.args.args
        + function.args.kwonlyargs
    ]
    page = context.new_page()
    page.goto(base_url + "api/", wait_until="load")
    listed = page.evaluate(
        API_PARAMETERS_JS, "kernels.flash_attention.flash_attention"
    )
    assert listed is not None, (
        "the API page has no entry kernels.flash_attention.flash_attention"
    )
    assert listed == arguments, (
        f"Parameters of flash_attention on the API page: {listed}"
    )
    text = page.inner_text("article")
    for needed in (
        "Returns:",
        "Raises:",
        "TypeError",
        "ValueError",
        "attention_ref",
        "attention_blockwise",
    ):
        assert needed in text, f"the API page does not show {needed!r}"
    page.close()


def test_pages_link_the_repository_and_offer_their_notebook(site_dir, pages):
    """With `repo_url` set: every article that has a companion notebook, and every notebook
    page, offers a labelled "Download notebook" link to the .ipynb in the site and an "Open in
    Colab" link to that notebook in the repository; the header links the repository; the
    commits of provenance lines link to the repository; the Reproduce page clones it."""
    notebooks = sorted(
        p.relative_to(DOCS).as_posix()
        for p in (DOCS / "generated").glob("*/*.ipynb")
    )
    assert notebooks, "no companion notebook in docs/generated"
    checked = []
    for notebook in notebooks:
        article = notebook.split("/")[1]
        for page in (f"{article}.md", notebook.removesuffix(".ipynb")):
            built = site_dir / page_url(page) / "index.html"
            text = built.read_text(encoding="utf-8")
            download = re.search(
                r'<a class="md-button notebook-download" href="([^"]+)"[^>]*>(.*?)</a>',
                text,
                re.S,
            )
            assert download, f"{page}: no download button"
            assert "Download notebook" in download.group(2), (
                f"{page}: the download button has no label"
            )
            assert (built.parent / download.group(1)).resolve().is_file(), (
                f"{page}: {download.group(1)} is not in the site"
            )
            colab = re.search(
                r'<a class="md-button notebook-colab" href="([^"]+)"', text
            )
            assert colab, f"{page}: no Open in Colab button"
            expected = (
                "https://colab.research.google.com/github/example/fast-llm-kernels/blob/main/docs/"
                + notebook
            )
            assert colab.group(1) == expected, (
                f"{page}: Colab link {colab.group(1)}, expected {expected}"
            )
            assert f'href="{REPO_URL}"' in text, (
                f"{page}: the header does not link the repository"
            )
            checked.append(page)
    assert len(checked) == 2 * len(notebooks)
    commits = re.findall(
        r'<p class="provenance">.*?</p>',
        (site_dir / page_url("flash_attention.md") / "index.html").read_text(
            encoding="utf-8"
        ),
        re.S,
    )
    assert commits, "flash_attention: no provenance line"
    for line in commits:
        if "commit " in line and "no commit" not in line:
            assert re.search(
                rf'commit <a href="{re.escape(REPO_URL)}/commit/[0-9a-f]{{7,40}}">',
                line,
            ), line
    reproduce = (site_dir / page_url("reproduce.md") / "index.html").read_text(
        encoding="utf-8"
    )
    assert (
        "fast-llm-kernels.git" in reproduce
        and "&lt;repository-url&gt;" not in reproduce
    )


def test_generated_figures_open_at_full_size(site_dir):
    """Each figure the build step inserts opens at full size when clicked or tapped: it sits
    inside a lightbox link (GLightbox) that points at the figure file itself."""
    count, unlinked = 0, []
    figure = re.compile(
        r'(<a\b[^>]*>\s*)?<img\b[^>]*class="[^"]*\bgenerated-figure\b[^"]*"[^>]*>',
        re.DOTALL,
    )
    for article, _ in articles():
        page_dir = site_dir / page_url(article)
        text = (page_dir / "index.html").read_text(encoding="utf-8")
        for match in figure.finditer(text):
            count += 1
            src = re.search(r'\bsrc="([^"]+)"', match.group(0)).group(1)
            anchor = match.group(1) or ""
            href = re.search(r'\bhref="([^"]+)"', anchor)
            lightbox = re.search(r'\bclass="[^"]*\bglightbox\b', anchor)
            target = (
                (page_dir / html.unescape(href.group(1))).resolve()
                if href
                else None
            )
            if not (
                lightbox
                and href
                and href.group(1) == src
                and target
                and target.is_file()
            ):
                unlinked.append(f"{article}: {src}")
    assert count, "no generated figure on any article"
    assert not unlinked, (
        f"generated figures not linked to their file: {unlinked[:5]}"
    )
    assert (
        site_dir / "assets" / "javascripts" / "glightbox.min.js"
    ).is_file(), "the lightbox script is not in the built site"


def test_clicking_a_figure_opens_it_in_the_lightbox(context, base_url):
    """On a phone, where the column shrinks a figure, a tap on a generated figure shows that
    figure in the lightbox, larger than in the column (a desktop's column shows figures at
    their natural size already)."""
    page = context.new_page()
    watch = PageWatch(page)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(base_url + page_url("flash_attention.md"), wait_until="load")
    figure = page.locator("img.generated-figure").first
    src = figure.evaluate("(img) => img.src")
    shown_width = figure.evaluate("(img) => img.getBoundingClientRect().width")
    figure.click()
    slide = page.locator(".gslide-image img").first
    slide.wait_for(state="visible", timeout=10_000)
    assert slide.evaluate("(img) => img.src") == src, (
        "the lightbox shows another image"
    )
    page.wait_for_function(
        "(w) => { const img = document.querySelector('.gslide-image img');"
        " return img && img.getBoundingClientRect().width > w; }",
        arg=shown_width,
        timeout=10_000,
    )
    assert not watch.problems, "; ".join(watch.problems)
    page.close()


# Every code block on the page that is wider than its column: it would scroll sideways.
WIDE_CODE_JS = """
() => Array.from(document.querySelectorAll(".md-typeset pre > code"))
  .filter(code => code.scrollWidth > code.clientWidth + 1)
  .map(code => ({
    width: code.scrollWidth, column: code.clientWidth,
    line: (code.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), ""))
      .trim().slice(0, 60),
  }))
"""


@pytest.mark.parametrize("article", [article for article, _ in articles()])
def test_code_fits_the_column_on_a_desktop(browser, base_url, article):
    """At 1280 px no code block of an article is wider than its column: snippet lines are at
    most 80 characters (tests/test_format.py), and the column shows 83."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(base_url + page_url(article), wait_until="load")
        count = page.evaluate(
            "() => document.querySelectorAll('.md-typeset pre > code').length"
        )
        wide = page.evaluate(WIDE_CODE_JS)
        assert count, f"{article}: no code block on the page"
        assert not wide, (
            f"{article} at 1280 px: code blocks wider than the column: {wide[:5]}"
        )
    finally:
        context.close()
