"""The articles' scripts, and apart from them the build tool that runs them.

`snippets/<article>/<NN>_<name>.py` are the scripts the pages show (folders, not
packages). `snippets/_build/` is the build tool, standard library only:
`python -m snippets` (see `snippets/__main__.py`) runs each script in a fresh
process and publishes what it wrote, with `stdout.txt`, `cells.json` and
`meta.json`, into `docs/generated/<article>/<NN>_<name>/`, plus a companion
notebook per article; `snippets/_build/hook.py` (the MkDocs plugin
`generated-outputs`) renders those outputs on the site's pages;
`snippets/_build/gpu.py` is the GPU run (`make gpu-run`). The snippets
themselves never import this package.
"""
