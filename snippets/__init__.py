"""The build step: runs the snippet scripts and writes their outputs under docs/generated/.

`python -m snippets` (see `snippets/__main__.py`) runs every `snippets/<article>/<NN>_<name>.py`
in a fresh process and publishes what it wrote, with `stdout.txt`, `cells.json` and `meta.json`,
into `docs/generated/<article>/<NN>_<name>/`, plus a companion notebook per article.
`snippets/_build/hook.py` renders those outputs on the site's pages. The snippets themselves
never import this package.
"""
