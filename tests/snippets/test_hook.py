"""Tests of the MkDocs hook that renders `[[ output: ... ]]` and `[[ value: ... ]]` markers.

The generated outputs are written here by hand, with real hashes, so no snippet runs.
"""

import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

from snippets._build import hook
from snippets._build.provenance import provenance_line, sha256_file

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>\n'
META = {
    "gpu": True,
    "device": "NVIDIA H100 80GB HBM3",
    "cuda": "12.8",
    "torch": "2.11.0",
    "triton": "3.6.0",
    "python": "3.12.3",
    "date": "2026-11-20T08:00:00+00:00",
    "commit": "abc1234def",
    "dirty": False,
    "duration_s": 1.0,
}
OUTPUTS = {
    "fig.svg": SVG,
    "table.md": "| n | ms |\n|---|---|\n| 1 | 2.5 |\n",
    "log.txt": "step 1\n```\nstep 2\n",
    "results.json": json.dumps(
        {
            "speedup": 2.345678,
            "big": 12345.6,
            "n": 7,
            "name": "bf16",
            "nested": {"ms": [0.5, 0.25]},
        }
    ),
}


@pytest.fixture
def repo(tmp_path):
    """A repository with one fresh output (demo/01_fresh), one CPU output, one GPU-only snippet
    without output and one snippet without output."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels/ops.py").write_text("X = 1\n")
    sources = {
        "01_fresh": "import kernels\nprint(1)\n",
        "02_cpu": "print(2)\n",
        "03_gpu": "# requires: cuda\nprint(3)\n",
        "04_never": "print(4)\n",
    }
    for stem, source in sources.items():
        path = tmp_path / "snippets/demo" / f"{stem}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    write_output(tmp_path, "01_fresh", OUTPUTS, META)
    write_output(
        tmp_path,
        "02_cpu",
        {"log.txt": "cpu\n"},
        {
            **META,
            "gpu": False,
            "device": "AMD EPYC 7763",
            "cuda": None,
            "dirty": True,
        },
    )
    (tmp_path / "docs").mkdir(exist_ok=True)
    return tmp_path


def write_output(root: Path, stem: str, files: dict, meta: dict) -> None:
    """Write a generated output folder as the build step would, with the current hashes."""
    folder = root / "docs/generated/demo" / stem
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    snippet = root / "snippets/demo" / f"{stem}.py"
    imported = (
        ["kernels/ops.py"] if "import kernels" in snippet.read_text() else []
    )
    full = {
        "snippet": f"snippets/demo/{stem}.py",
        "snippet_sha256": sha256_file(snippet),
        "modules": {rel: sha256_file(root / rel) for rel in imported},
        **meta,
        "files": {n: sha256_file(folder / n) for n in files},
    }
    (folder / "meta.json").write_text(json.dumps(full))


def render(
    root: Path, markdown: str, src_uri: str = "page.md", page=None
) -> str:
    """Run the hook's build and page events on `markdown` as MkDocs would."""
    config = {
        "docs_dir": str(root / "docs"),
        "config_file_path": str(root / "mkdocs.yml"),
        "markdown_extensions": [
            "attr_list",
            "admonition",
            "pymdownx.superfences",
        ],
    }
    hook.on_config(config)
    hook.on_pre_build(config)
    page = page or types.SimpleNamespace(
        file=types.SimpleNamespace(src_uri=src_uri), meta={}
    )
    return hook.on_page_markdown(markdown, page=page, config=config, files=None)


def warnings(caplog) -> list[str]:
    """The warning messages the hook logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("mkdocs.plugins") and r.levelno >= logging.WARNING
    ]


def provenance(root: Path, stem: str) -> str:
    """The provenance paragraph expected under an output of `stem`."""
    meta = json.loads(
        (root / "docs/generated/demo" / stem / "meta.json").read_text()
    )
    return f"{provenance_line(meta)}\n{{: .provenance }}\n"


def test_figure_with_class_relative_path_and_provenance(repo, caplog):
    out = render(
        repo,
        "Intro.\n\n[[ output: demo/01_fresh/fig.svg | Peak memory by length ]]\n",
    )
    assert out == (
        "Intro.\n\n![Peak memory by length](generated/demo/01_fresh/fig.svg)"
        "{ .generated-figure }\n\n" + provenance(repo, "01_fresh") + "\n"
    )
    nested = render(
        repo,
        "[[ output: demo/01_fresh/fig.svg|Alt ]]",
        src_uri="guide/deep/page.md",
    )
    assert (
        "![Alt](../../generated/demo/01_fresh/fig.svg){ .generated-figure }"
        in nested
    )
    assert (
        "Generated on NVIDIA H100 80GB HBM3 · CUDA 12.8 · torch 2.11.0" in out
    )
    assert warnings(caplog) == []


def test_table_text_and_json_blocks(repo, caplog):
    table = render(repo, "[[ output: demo/01_fresh/table.md ]]")
    assert table.startswith(
        "| n | ms |\n|---|---|\n| 1 | 2.5 |\n\nGenerated on NVIDIA H100"
    )
    text = render(repo, "[[ output: demo/01_fresh/log.txt ]]")
    assert text.startswith("````text\nstep 1\n```\nstep 2\n````\n")
    data = render(repo, "[[ output: demo/01_fresh/results.json ]]")
    assert data.startswith('```json\n{"speedup": 2.345678')
    cpu = render(repo, "[[ output: demo/02_cpu/log.txt ]]")
    assert (
        "Generated on CPU (AMD EPYC 7763) · torch 2.11.0 · triton 3.6.0 · 2026-11-20 · "
        "commit abc1234 (uncommitted changes)\n{: .provenance }" in cpu
    )
    assert warnings(caplog) == []


def test_indented_marker_keeps_its_indentation(repo):
    out = render(
        repo,
        '!!! note "Figure"\n    [[ output: demo/01_fresh/fig.svg | Alt ]]\n',
    )
    assert (
        "\n    ![Alt](generated/demo/01_fresh/fig.svg){ .generated-figure }\n"
        in out
    )
    assert "\n    {: .provenance }\n" in out


@pytest.mark.parametrize("edit", ["kernels", "snippet"])
def test_stale_output_gets_a_warning_admonition(repo, caplog, edit):
    if edit == "kernels":
        (repo / "kernels/ops.py").write_text("X = 2\n")
    else:
        (repo / "snippets/demo/01_fresh.py").write_text("print('changed')\n")
    out = render(repo, "[[ output: demo/01_fresh/fig.svg | Alt ]]")
    changed = (
        "kernels/ops.py" if edit == "kernels" else "snippets/demo/01_fresh.py"
    )
    assert out.startswith(
        '!!! warning "Stale output"\n    The sources changed since this output was generated '
        f"on 2026-11-20 ({changed} changed). Regenerate it on a GPU machine with "
        "`python -m snippets --only demo/01_fresh`.\n\n![Alt]"
    )
    assert provenance(repo, "01_fresh") in out
    assert warnings(caplog) == []


def test_gpu_snippet_without_output_waits_for_a_gpu_run(repo, caplog):
    out = render(repo, "[[ output: demo/03_gpu/timings.svg | Timings ]]")
    assert out.startswith('!!! info "Waiting for a GPU run"\n')
    assert "`python -m snippets --only demo/03_gpu`" in out and "![" not in out
    value = render(
        repo, "Speedup [[ value: demo/03_gpu/results.json#speedup ]]."
    )
    assert value == "Speedup *(waiting for a GPU run)*."
    assert warnings(caplog) == []


def test_gpu_snippet_shows_one_note_saying_what_will_be_there(repo, caplog):
    """Two outputs of one waiting snippet: one note, at the first marker, from the docstring,
    naming no file; a CPU snippet's missing output still warns."""
    (repo / "snippets/demo/03_gpu.py").write_text(
        '"""Throughput: the kernel against ``torch.mm``.\n\nYou will see TFLOP/s against the '
        'length:\n* forward;\n* backward.\n"""\n# requires: cuda\nprint(3)\n'
    )
    (repo / "docs/reproduce.md").write_text("# Reproduce\n")
    out = render(
        repo,
        "Intro.\n\n[[ output: demo/03_gpu/timings.svg | Timings ]]\n\n"
        "Between.\n\n[[ output: demo/03_gpu/timings.md | Table ]]\n\nEnd.",
        src_uri="sub/page.md",
    )
    assert out.count("Waiting for a GPU run") == 1
    note = out[out.index("!!! info") : out.index("Between.")]
    assert "**Throughput: the kernel against torch.mm.**" in note
    assert (
        "    You will see TFLOP/s against the length:\n\n    * forward;\n    * backward."
        in note
    )
    assert "`python -m snippets --only demo/03_gpu`" in note
    assert "[the Reproduce page](../reproduce.md)" in note
    assert "timings" not in note and "03_gpu.py" not in note
    assert out.split("Between.")[1].strip() == "End."
    assert warnings(caplog) == []
    render(repo, "[[ output: demo/04_never/fig.svg | Alt ]]")
    assert len(warnings(caplog)) == 1


@pytest.mark.parametrize(
    "marker, message",
    [
        (
            "[[ output: demo/04_never/fig.svg | Alt ]]",
            "snippets/demo/04_never.py has no output yet",
        ),
        (
            "[[ output: demo/01_fresh/nope.svg | Alt ]]",
            "has no file 'nope.svg'",
        ),
        (
            "[[ output: demo/09_typo/fig.svg | Alt ]]",
            "no snippet snippets/demo/09_typo.py",
        ),
        (
            "[[ output: demo/fig.svg | Alt ]]",
            "expected <article>/<stem>/<file>",
        ),
    ],
)
def test_missing_outputs_warn_and_show_a_box(repo, caplog, marker, message):
    out = render(repo, marker)
    assert out.startswith('!!! failure "Missing output"\n') and message in out
    assert len(warnings(caplog)) == 1 and message in warnings(caplog)[0]


def test_figure_without_alt_text_warns(repo, caplog):
    out = render(repo, "[[ output: demo/01_fresh/fig.svg ]]")
    assert out.startswith("![](generated/demo/01_fresh/fig.svg)")
    assert "needs alt text" in warnings(caplog)[0]


def test_malformed_output_marker_warns(repo, caplog):
    """A "]" in the alt text ends the marker early: the line is not rendered, and the build hears of it."""
    render(repo, "[[ output: demo/01_fresh/fig.svg | the matrix W[t, s] ]]")
    assert "malformed output marker" in warnings(caplog)[0]


def test_values_are_formatted(repo, caplog):
    markdown = (
        "x [[ value: demo/01_fresh/results.json#speedup ]], "
        "[[value:demo/01_fresh/results.json#big]], "
        "[[ value: demo/01_fresh/results.json#n ]] "
        "[[ value: demo/01_fresh/results.json#name ]] "
        "[[ value: demo/01_fresh/results.json#nested.ms.1 ]]"
    )
    assert render(repo, markdown) == "x 2.35, 12346, 7 bf16 0.25"
    assert warnings(caplog) == []
    assert hook.format_value(0.000123456) == "0.000123"
    assert (
        hook.format_value(None) == "null"
        and hook.format_value([1, 2]) == "[1, 2]"
    )


@pytest.mark.parametrize(
    "target",
    [
        "demo/01_fresh/results.json#absent",
        "demo/01_fresh/other.json#speedup",
        "demo/04_never/results.json#speedup",
        "demo/01_fresh/results.json#nested.ms.5",
    ],
)
def test_missing_values_warn(repo, caplog, target):
    assert (
        render(repo, f"v = [[ value: {target} ]]")
        == f"v = **[missing: {target}]**"
    )
    assert (
        len(warnings(caplog)) == 1
        and target.split("#")[0] in warnings(caplog)[0]
    )


def test_markers_in_code_are_left_alone(repo, caplog):
    markdown = (
        "```markdown\n[[ output: demo/04_never/fig.svg | Alt ]]\n"
        "[[ value: demo/01_fresh/results.json#n ]]\n```\n"
        "~~~~\n```\n[[ output: demo/04_never/fig.svg | Alt ]]\n~~~~\n"
        "Write `[[ value: demo/01_fresh/results.json#n ]]` to get "
        "[[ value: demo/01_fresh/results.json#n ]].\n"
    )
    expected = markdown.replace(
        "get [[ value: demo/01_fresh/results.json#n ]]", "get 7"
    )
    assert render(repo, markdown) == expected
    assert warnings(caplog) == []


def test_on_config_warns_about_missing_extensions(caplog):
    hook.on_config({"markdown_extensions": ["admonition", "toc"]})
    assert warnings(caplog) == [
        "snippets hook: add the Markdown extension 'attr_list' to mkdocs.yml"
    ]


def test_strict_mkdocs_build_renders_and_fails_on_missing(repo):
    pytest.importorskip("mkdocs")
    (repo / "mkdocs.yml").write_text(
        "site_name: T\nmarkdown_extensions: [attr_list, admonition]\n"
        "plugins: [generated-outputs]\n"
    )
    (repo / "docs/index.md").write_text(
        "# T\n\n[[ output: demo/01_fresh/fig.svg | Fig ]]\n"
    )
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    result = subprocess.run(
        command, cwd=repo, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    html = (repo / "site/index.html").read_text()
    assert (
        'class="generated-figure"' in html
        and 'src="generated/demo/01_fresh/fig.svg"' in html
    )
    assert '<p class="provenance">Generated on NVIDIA H100' in html
    shutil.rmtree(repo / "site")
    (repo / "docs/index.md").write_text(
        "# T\n\n[[ output: demo/04_never/fig.svg | Fig ]]\n"
    )
    result = subprocess.run(
        command, cwd=repo, capture_output=True, text=True, check=False
    )
    assert (
        result.returncode != 0
        and "04_never.py has no output yet" in result.stderr
    )


def test_outputs_table_lists_every_snippet_with_its_state(repo, caplog):
    (repo / "snippets/demo/02_cpu.py").write_text("print('changed')\n")
    out = render(
        repo, "Intro\n\n[[ outputs-table ]]\n\n```\n[[ outputs-table ]]\n```\n"
    )
    rows = [line for line in out.split("\n") if line.startswith("| `demo/")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "`demo/01_fresh`",
        "`demo/02_cpu`",
        "`demo/03_gpu`",
        "`demo/04_never`",
    ]
    assert "NVIDIA H100 80GB HBM3, CUDA 12.8" in rows[0] and rows[0].endswith(
        "| fresh |"
    )
    assert (
        "CPU (AMD EPYC 7763)" in rows[1]
        and "stale: snippets/demo/02_cpu.py changed" in rows[1]
    )
    assert rows[2].endswith("| waits for a GPU run |") and rows[3].endswith(
        "| missing |"
    )
    assert "```\n[[ outputs-table ]]\n```" in out  # left alone inside code
    assert warnings(caplog) == []


def test_device_marker_names_where_each_output_was_made(repo, caplog):
    markdown = (
        "| [[ device: demo/01_fresh ]] | [[device:demo/02_cpu]] | "
        "[[ device: demo/03_gpu ]] | `[[ device: demo/01_fresh ]]` |"
    )
    assert render(repo, markdown) == (
        "| NVIDIA H100 80GB HBM3 | CPU (AMD EPYC 7763) | "
        "*waiting for a GPU run* | `[[ device: demo/01_fresh ]]` |"
    )
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    "key, message",
    [
        ("demo/04_never", "04_never.py has no output yet"),
        ("demo/09_typo", "no snippet snippets/demo/09_typo.py"),
    ],
)
def test_device_marker_without_output_warns(repo, caplog, key, message):
    assert render(repo, f"on [[ device: {key} ]]") == f"on **[missing: {key}]**"
    assert len(warnings(caplog)) == 1 and message in warnings(caplog)[0]


def test_gpu_environment_shows_the_most_recent_gpu_output(repo, caplog):
    (repo / "snippets/demo/05_later.py").write_text("print(5)\n")
    write_output(
        repo,
        "05_later",
        {"log.txt": "later\n"},
        {
            **META,
            "device": "NVIDIA H200",
            "driver": "570.86.15",
            "cuda": "12.9",
            "date": "2026-11-21T09:30:00+00:00",
            "dirty": True,
        },
    )
    out = render(repo, "# Reproduce\n\n[[ gpu-environment ]]\n")
    assert (
        "The most recent output made on a GPU is that of `demo/05_later` (fresh)"
        in out
    )
    for row in [
        "| Device | NVIDIA H200 |",
        "| Driver | 570.86.15 |",
        "| CUDA | 12.9 |",
        "| PyTorch | 2.11.0 |",
        "| Triton | 3.6.0 |",
        "| Python | 3.12.3 |",
        "| Date | 2026-11-21 09:30 UTC |",
        "| Commit | `abc1234def` with uncommitted changes |",
    ]:
        assert f"\n{row}\n" in out, row
    shutil.rmtree(repo / "docs/generated/demo/05_later")
    out = render(repo, "[[ gpu-environment ]]")
    assert (
        "that of `demo/01_fresh` (fresh)" in out
        and "| Driver | *not recorded* |" in out
    )
    assert warnings(caplog) == []


def test_gpu_environment_without_gpu_output_says_so(repo, caplog):
    shutil.rmtree(repo / "docs/generated/demo/01_fresh")
    out = render(
        repo,
        "Text\n\n[[ gpu-environment ]]\n\n```\n[[ gpu-environment ]]\n```\n",
    )
    assert (
        '!!! note "No output has been produced on a GPU yet"\n    Every output'
        in out
    )
    assert "```\n[[ gpu-environment ]]\n```" in out and "| Device |" not in out
    assert warnings(caplog) == []


def test_on_config_accepts_extension_instances(caplog):
    hook.on_config(
        {"markdown_extensions": ["attr_list", {"admonition": {}}, object()]}
    )
    assert warnings(caplog) == []


# An image output as nbconvert's lab template writes it, with the alt text nbconvert adds.
NBCONVERT_IMG = (
    '<div class="jp-RenderedSVG"><img src="data:image/svg+xml;base64,{svg}" '
    'alt="No description has been provided for this image"/></div>'
    '<div class="jp-RenderedImage"><img class="\n" src="data:image/png;base64,{png}"'
    ' alt="No description has been provided for this image"/></div>'
    '<img alt="logo" src="logo.png"/>'
)


def test_notebook_pages_get_the_alt_text_the_notebook_records():
    import base64

    svg, png = SVG, "iVBORw0KGgo="
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": "# T"},
            {
                "cell_type": "code",
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": "x\n"},
                    {
                        "output_type": "display_data",
                        "data": {
                            "image/svg+xml": svg.splitlines(True),
                            "text/plain": "<fig.svg>",
                        },
                        "metadata": {
                            "image/svg+xml": {"alt": 'Peak "memory" & <time>'}
                        },
                    },
                    {
                        "output_type": "display_data",
                        "data": {"image/png": png, "text/plain": "<f.png>"},
                        "metadata": {"image/png": {"alt": "A PNG figure"}},
                    },
                ],
            },
        ]
    }
    html = NBCONVERT_IMG.format(
        svg=base64.b64encode(svg.encode()).decode(), png=png
    )
    out = hook.with_notebook_alt_text(html, notebook)
    assert (
        '<img alt="Peak &quot;memory&quot; &amp; &lt;time&gt;" src="data:image/svg+xml'
        in out
    )
    assert (
        '<img alt="A PNG figure" class="\n" src="data:image/png;base64,iVBORw0KGgo="/>'
        in out
    )
    assert (
        '<img alt="logo" src="logo.png"/>' in out
        and "No description" not in out
    )


def test_figures_with_a_raster_image_are_marked_to_keep_their_colours():
    """A figure holding a raster image (a heatmap) gets the class `raster`,
    which the dark palette does not invert; a line plot does not. Checked on the
    site's own figures, in an article and in its notebook."""
    import base64

    generated = REPOSITORY / "docs/generated"
    heatmap = generated / "ssd/02_mask/mask.svg"
    plot = generated / "linear_attention/02_scaling/scaling.svg"
    assert hook.has_raster(heatmap.read_text())
    assert not hook.has_raster(plot.read_text())
    assert (
        hook._embed(heatmap, "Mask", "g/mask.svg")
        == "![Mask](g/mask.svg){ .generated-figure .raster }\n"
    )
    assert (
        hook._embed(plot, "Plot", "g/scaling.svg")
        == "![Plot](g/scaling.svg){ .generated-figure }\n"
    )
    outputs = [
        {
            "output_type": "display_data",
            "data": {"image/svg+xml": path.read_text()},
            "metadata": {"image/svg+xml": {"alt": path.stem}},
        }
        for path in (heatmap, plot)
    ]
    notebook = {"cells": [{"cell_type": "code", "outputs": outputs}]}
    uri = [
        base64.b64encode(path.read_bytes()).decode() for path in (heatmap, plot)
    ]
    html = (
        f'<img class="jp-a" src="data:image/svg+xml;base64,{uri[0]}"/>'
        f'<img src="data:image/svg+xml;base64,{uri[1]}"/>'
    )
    out = hook.with_notebook_alt_text(html, notebook)
    assert '<img alt="mask" class="raster jp-a" src=' in out
    assert '<img alt="scaling" src=' in out and out.count("raster") == 1


def test_articles_rank_above_notebooks_in_search(repo):
    """Articles (pages named after a snippet folder) get Material's search boost, unless they
    set their own; notebooks and the site's other pages do not."""
    pages = {
        uri: types.SimpleNamespace(
            file=types.SimpleNamespace(src_uri=uri), meta=dict(meta)
        )
        for uri, meta in (
            ("demo.md", {}),
            ("b.md", {"search": {"boost": 5}}),
            ("api.md", {}),
            ("n.ipynb", {}),
        )
    }
    for uri, page in pages.items():
        render(repo, "text", page=page)
    assert pages["demo.md"].meta["search"]["boost"] == 2
    assert pages["b.md"].meta["search"]["boost"] == 5
    assert (
        "search" not in pages["api.md"].meta
        and "search" not in pages["n.ipynb"].meta
    )


def test_only_notebook_pages_are_rewritten(repo, tmp_path):
    page = types.SimpleNamespace(
        file=types.SimpleNamespace(
            src_uri="page.md", abs_src_path=str(tmp_path / "x")
        )
    )
    html = '<img src="a.png" alt="No description has been provided for this image"/>'
    assert hook.on_page_content(html, page=page, config={}, files=None) == html


SCRIPT = '''"""A demo."""
# %%
import math

# %% [markdown]
# The square root of two, printed.

# %%
x = math.sqrt(2)
print(f"{x:.3f}")
'''


def test_snippet_includes_show_clean_runnable_code(repo, tmp_path):
    """A page's whole-file include of a snippet shows its code without cell markers, indented
    like the include; the shown code runs and prints what the script prints; other includes
    (a section of a kernel file, a path outside snippets/) are left to pymdownx.snippets."""
    (repo / "snippets/demo/05_script.py").write_text(SCRIPT)
    page = (
        '???+ example "Snippet"\n\n    ```python\n    --8<-- "snippets/demo/05_script.py"\n'
        '    ```\n\n```python\n--8<-- "kernels/ops.py:part"\n--8<-- "kernels/ops.py"\n```\n'
        '\nOutside code: --8<-- "snippets/demo/05_script.py"\n'
    )
    out = render(repo, page)
    shown = out.split("    ```python\n")[1].split("    ```\n")[0]
    assert "# %%" not in shown and "--8<--" not in shown
    assert all(
        line.startswith("    ") or not line for line in shown.splitlines()
    )
    code = "\n".join(line[4:] for line in shown.splitlines())
    assert code.startswith('"""A demo."""\nimport math\n')
    assert "# The square root of two, printed.\n" in code
    (tmp_path / "shown.py").write_text(code)
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "shown.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout == "1.414\n"
    assert '--8<-- "kernels/ops.py:part"\n--8<-- "kernels/ops.py"\n' in out
    assert out.endswith('Outside code: --8<-- "snippets/demo/05_script.py"\n')


def test_notebook_prompts_buttons_and_code_are_kept_out_of_search():
    """Material's search parser, on a rendered notebook cell marked by the hook, indexes the
    prose and the heading, not the prompt, the copy button, the "¶" link or the code."""
    search = pytest.importorskip("material.plugins.search.plugin")
    cell = (
        '<h2 id="s">Section<a class="anchor-link" href="#s">¶</a></h2>'
        '<div class="jp-Cell jp-MarkdownCell"><div class="jp-InputPrompt jp-InputArea-prompt">'
        "</div><p>Some prose.</p></div>"
        '<div class="jp-Cell jp-CodeCell"><div class="jp-InputArea">'
        '<div class="jp-InputPrompt jp-InputArea-prompt">In [1]:</div>'
        '<div class="jp-CodeMirrorEditor"><div class="zeroclipboard-container">'
        '<clipboard-copy for="cell-1"><div><span class="notice" hidden="">Copied!</span>'
        '</div></clipboard-copy></div><div class="highlight-ipynb"><pre><span>x</span> = 1'
        '</pre></div><div class="clipboard-copy-txt" id="cell-1">x = 1</div></div></div>'
        '<div class="jp-OutputArea"><div class="jp-OutputPrompt">Out[1]:</div>'
        '<div class="jp-RenderedText"><pre>printed</pre></div></div></div><p>After.</p>'
    )
    marked = hook.exclude_from_search(cell)
    parser = search.Parser()
    parser.feed(marked)
    parser.close()
    indexed = {"".join(s.title).strip(): "".join(s.text) for s in parser.data}
    assert list(indexed) == ["", "Section"]
    text = indexed["Section"]
    assert "Some prose." in text and "After." in text
    for hidden in ("In [1]", "Out[1]", "Copied!", "x = 1", "printed", "¶"):
        assert hidden not in text
    assert (
        hook.exclude_from_search(
            marked.replace(' data-search-exclude="notebook"', "")
        )
        == marked
    )


def test_search_aliases_join_hyphenated_words_and_name_articles():
    index = {
        "config": {"fields": {"title": {"boost": 1000.0}}},
        "docs": [
            {
                "location": "linear_attention/",
                "title": "Linear",
                "text": "<p>The chunk-wise form</p>",
            },
            {
                "location": "linear_attention/#x",
                "title": "Token-by-token",
                "text": "a - b, x-1, re-",
            },
            {
                "location": "generated/a/a/",
                "title": "Notebook",
                "text": "<p>plain</p>",
            },
        ],
    }
    out = hook.add_search_aliases(index, {"linear_attention"})
    fields = out["config"]["fields"]
    assert fields["aliases"] == {"boost": 1.0} and fields["title_aliases"] == {
        "boost": 1000.0
    }
    assert fields["name"] == {"boost": 1000.0}
    assert [d.get("aliases") for d in out["docs"]] == ["chunkwise", None, None]
    assert [d.get("title_aliases") for d in out["docs"]] == [
        None,
        "tokenbytoken",
        None,
    ]
    assert [d.get("name") for d in out["docs"]] == [
        "linear_attention",
        None,
        None,
    ]


def test_only_articles_named_after_their_op_are_found_by_name(repo):
    """An article that shows its own name as code is named in the index; one whose name is
    only a file name (it would catch every search for its first word) is not."""
    for article in ("flash_attention", "attention_concentration"):
        (repo / "snippets" / article).mkdir()
        (repo / "snippets" / article / "01_x.py").write_text("print(1)\n")
    (repo / "docs/flash_attention.md").write_text(
        "# FlashAttention\n\nCall `flash_attention`.\n"
    )
    (repo / "docs/attention_concentration.md").write_text(
        "# Can attention concentrate?\n"
    )
    config = {
        "docs_dir": str(repo / "docs"),
        "config_file_path": str(repo / "mkdocs.yml"),
        "markdown_extensions": [],
    }
    hook.on_pre_build(config)
    assert hook.op_articles(hook._build(config)) == {"flash_attention"}
