"""Tests of the build step (`python -m snippets`) on tiny throwaway repositories.

The fixture snippets write text, JSON and matplotlib figures; none needs a GPU or the real
kernels. Each successful snippet costs one child process (about two seconds: it imports torch to
record the device), so the main build is shared by the tests that only read its outputs.
"""

import base64
import datetime
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

from snippets._build import build as _build
from snippets.__main__ import main
from snippets._build.provenance import (
    META_KEYS,
    discover,
    provenance_line,
    select,
    sha256_file,
    status,
)
from snippets._build import notebook as _notebook, runner as _runner
from snippets._build.provenance import figure_alt_texts
from snippets._build.runner import parse_cells

PLOT = '''"""A figure, a table and a JSON file."""
# %% [markdown]
# # Plot
# Some *prose*.

# %%
import json
import matplotlib.pyplot as plt
import kernels.ops  # the outputs depend on the kernels
print("computing")

# %%
plt.plot([1, 2, 3])
plt.savefig("line.svg")
plt.savefig("line.png")
with open("table.md", "w") as f:
    f.write("| n | ms |\\n|---|---|\\n| 1 | 2.5 |\\n")
json.dump({"speedup": 2.345678}, open("results.json", "w"))
print("saved")
'''
TEXT = """# %%
with open("notes.txt", "w") as f:
    f.write("plain text\\n")
print("text done")
"""
GPU = '''"""Timings."""
# requires: cuda
# %%
print("timing")
'''


def make_repo(root: Path, snippets: dict, kernels: str = "X = 1\n") -> Path:
    """A repository with `kernels/ops.py` and the given {"<article>/<file>": source} snippets."""
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "__init__.py").write_text("")
    (root / "kernels" / "ops.py").write_text(kernels)
    for name, source in snippets.items():
        path = root / "snippets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m snippets ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "snippets", *args],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )


def out_of(repo: Path, key: str = "") -> Path:
    """The generated folder of `repo`, or one snippet's output folder in it."""
    return repo / "docs" / "generated" / key


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A repository built once: (its root, the completed `python -m snippets` process)."""
    repo = make_repo(
        tmp_path_factory.mktemp("built"),
        {
            "demo/01_plot.py": PLOT,
            "demo/02_text.py": TEXT,
            "demo/03_gpu.py": GPU,
        },
    )
    return repo, run_cli("--root", str(repo))


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built repository, free to edit."""
    return Path(shutil.copytree(built[0], tmp_path / "repo"))


def test_build_publishes_outputs_and_progress(built):
    repo, result = built
    assert result.returncode == 0, result.stderr
    assert "[1/3] demo/01_plot ..." in result.stdout
    assert "    computing\n" in result.stdout and "    saved\n" in result.stdout
    assert "[1/3] demo/01_plot done in" in result.stdout
    assert "[2/3] demo/02_text done in" in result.stdout
    names = {p.name for p in out_of(repo, "demo/01_plot").iterdir()}
    assert names == {
        "line.svg",
        "line.png",
        "table.md",
        "results.json",
        "stdout.txt",
        "cells.json",
        "meta.json",
    }
    assert (
        out_of(repo, "demo/01_plot") / "stdout.txt"
    ).read_text() == "computing\nsaved\n"
    assert (
        out_of(repo, "demo/02_text") / "notes.txt"
    ).read_text() == "plain text\n"
    assert not [
        p for p in out_of(repo, "demo").iterdir() if p.name.startswith(".")
    ]


def test_meta_json_records_provenance(built):
    repo, _ = built
    folder = out_of(repo, "demo/01_plot")
    meta = json.loads((folder / "meta.json").read_text())
    assert tuple(meta) == META_KEYS
    assert meta["snippet"] == "snippets/demo/01_plot.py"
    assert meta["snippet_sha256"] == sha256_file(
        repo / "snippets/demo/01_plot.py"
    )
    assert meta[
        "modules"
    ] == {  # what it imported from the repository, not the snippet
        "kernels/__init__.py": sha256_file(repo / "kernels/__init__.py"),
        "kernels/ops.py": sha256_file(repo / "kernels/ops.py"),
    }
    assert (
        json.loads((out_of(repo, "demo/02_text/meta.json")).read_text())[
            "modules"
        ]
        == {}
    )
    assert meta["gpu"] is False and meta["cuda"] is None and meta["device"]
    assert meta["driver"] is None  # recorded only when a GPU is present
    assert meta["torch"] == importlib.metadata.version("torch")
    assert meta["triton"] == importlib.metadata.version("triton")
    assert meta["python"] == platform.python_version()
    date = datetime.datetime.fromisoformat(meta["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert (
        abs(datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()
        < 600
    )
    assert (
        meta["commit"] is None and meta["dirty"] is False
    )  # not a git repository
    assert 0 < meta["duration_s"] < 120
    files = {
        p.name: sha256_file(p)
        for p in folder.iterdir()
        if p.name != "meta.json"
    }
    assert meta["files"] == files


def test_requires_cuda_is_skipped_without_gpu(built):
    repo, result = built
    assert (
        "[3/3] demo/03_gpu skipped: requires CUDA; it waits for a GPU run"
        in result.stdout
    )
    assert "timing" not in result.stdout
    assert not out_of(repo, "demo/03_gpu").exists()


def test_cells_json_has_cells_and_outputs(built):
    repo, _ = built
    cells = json.loads(
        (out_of(repo, "demo/01_plot") / "cells.json").read_text()
    )
    assert [c["cell_type"] for c in cells] == [
        "code",
        "markdown",
        "code",
        "code",
    ]
    assert cells[1]["source"] == "# Plot\nSome *prose*."
    assert cells[2]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "computing\n"}
    ]
    outputs = cells[3]["outputs"]
    assert outputs[0] == {
        "output_type": "stream",
        "name": "stdout",
        "text": "saved\n",
    }
    figures = {
        k: v
        for o in outputs[1:]
        for k, v in o["data"].items()
        if k.startswith("image")
    }
    assert {o["output_type"] for o in outputs[1:]} == {"display_data"}
    assert figures["image/svg+xml"].lstrip().startswith("<?xml")
    assert base64.b64decode(figures["image/png"]).startswith(b"\x89PNG")


def test_companion_notebook_is_valid_and_has_outputs(built):
    repo, result = built
    path = out_of(repo, "demo/demo.ipynb")
    assert f"wrote {path}" in result.stdout
    nb = json.loads(path.read_text())
    assert (
        nb["nbformat"] == 4
        and nb["metadata"]["kernelspec"]["name"] == "python3"
    )
    title = nb["cells"][0]["source"]
    assert (
        "Generated by `python -m snippets`" in title
        and "pip install -e ." in title
    )
    assert title.startswith("# Notebook: Demo\n"), title.splitlines()[0]
    sources = [c["source"] for c in nb["cells"]]
    # A heading per snippet in plain language, from its docstring (else its file name).
    assert [s.splitlines()[0] for s in sources if s.startswith("## ")] == [
        "## A figure, a table and a JSON file",
        "## Text",
        "## Timings",
    ]
    about = next(
        i for i, s in enumerate(sources) if s.startswith("## A figure")
    )
    assert sources[about].endswith(
        "Script: `snippets/demo/01_plot.py`. *"
        + provenance_line(
            json.loads((out_of(repo, "demo/01_plot") / "meta.json").read_text())
        )
        + "*"
    )
    # The docstring is the section's prose, not a code cell; the markdown cells stay prose.
    assert not any(
        c["cell_type"] == "code" and c["source"].startswith('"""')
        for c in nb["cells"]
    )
    assert (
        nb["cells"][about + 1]["cell_type"],
        nb["cells"][about + 1]["source"],
    ) == ("markdown", "# Plot\nSome *prose*.")
    assert nb["cells"][about + 3]["outputs"][1]["data"]["image/png"]
    gpu = [s for s in sources if s.startswith("## Timings")][0]
    assert "waits for a GPU run" in gpu
    assert (
        nb["cells"][-1]["source"] == 'print("timing")'
        and nb["cells"][-1]["outputs"] == []
    )
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))


def test_companion_notebook_passes_nbformat_validation(built):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(
        nbformat.read(out_of(built[0], "demo/demo.ipynb"), as_version=4)
    )


def test_check_and_list_after_a_build(built):
    result = run_cli("--root", str(built[0]), "--check")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        "demo/03_gpu: waiting-for-gpu: requires CUDA and waits for a GPU run "
        "(regenerate on a GPU machine: python -m snippets --only demo/03_gpu)",
        "only GPU runs are pending: every output a CPU run can update is fresh",
    ]
    listed = run_cli("--root", str(built[0]), "--list").stdout.split()
    assert listed == [
        "demo/01_plot",
        "fresh",
        "demo/02_text",
        "fresh",
        "demo/03_gpu",
        "waiting-for-gpu",
        "[requires",
        "cuda]",
    ]


def test_check_reports_stale_and_missing(copy, capsys):
    (copy / "snippets/demo/02_text.py").write_text(TEXT + "print('more')\n")
    assert main(["--root", str(copy), "--check", "--only", "02"]) == 1
    assert capsys.readouterr().out.startswith(
        "demo/02_text: stale: snippets/demo/02_text.py changed since the run of "
    )
    (copy / "kernels/ops.py").write_text("X = 2\n")
    assert main(["--root", str(copy), "--check", "--only", "01"]) == 1
    assert (
        "demo/01_plot: stale: kernels/ops.py changed since"
        in capsys.readouterr().out
    )
    shutil.rmtree(out_of(copy, "demo/01_plot"))
    assert main(["--root", str(copy), "--check", "--only", "01"]) == 1
    assert capsys.readouterr().out == (
        "demo/01_plot: missing: has no output yet "
        "(regenerate: python -m snippets --only demo/01_plot)\n"
    )


def test_check_does_not_fail_on_stale_gpu_output(copy, capsys):
    meta_path = out_of(copy, "demo/01_plot/meta.json")
    meta = json.loads(meta_path.read_text())
    meta["modules"]["kernels/ops.py"] = "old"
    meta_path.write_text(json.dumps({**meta, "gpu": True}))
    assert main(["--root", str(copy), "--check", "--only", "01"]) == 0
    assert (
        "stale: kernels/ops.py changed since the run of"
        in capsys.readouterr().out
    )


def test_outputs_of_snippets_that_do_not_import_kernels_ignore_kernel_changes(
    copy, capsys
):
    (copy / "kernels/ops.py").write_text("X = 2\n")
    assert main(["--root", str(copy), "--check", "--only", "02"]) == 0
    assert "demo/02_text" not in capsys.readouterr().out


def test_rebuild_replaces_the_folder_and_is_fresh_again(copy, capsys):
    (copy / "snippets/demo/02_text.py").write_text(
        'open("other.txt", "w").write("x")\n'
    )
    assert main(["--root", str(copy), "--only", "demo/02_*"]) == 0
    names = {p.name for p in out_of(copy, "demo/02_text").iterdir()}
    assert names == {"other.txt", "stdout.txt", "cells.json", "meta.json"}
    capsys.readouterr()
    assert main(["--root", str(copy), "--check"]) == 0
    assert "demo/02_text" not in capsys.readouterr().out


def test_gpu_output_is_not_overwritten_by_a_cpu_run(copy, capsys):
    meta_path = out_of(copy, "demo/02_text/meta.json")
    meta = json.loads(meta_path.read_text())
    meta.update(
        gpu=True,
        device="NVIDIA H100 80GB HBM3",
        cuda="12.8",
        date="2026-01-02T03:04:05+00:00",
    )
    meta_path.write_text(json.dumps(meta))
    before = {
        p.name: p.read_bytes() for p in out_of(copy, "demo/02_text").iterdir()
    }
    assert main(["--root", str(copy), "--only", "02_text"]) == 0
    out = capsys.readouterr().out
    assert (
        "[1/1] demo/02_text skipped: keeping the GPU output from 2026-01-02 on "
        "NVIDIA H100 80GB HBM3"
    ) in out
    assert "text done" not in out
    assert {
        p.name: p.read_bytes() for p in out_of(copy, "demo/02_text").iterdir()
    } == before


def test_failure_stops_the_build_and_keeps_earlier_outputs(tmp_path, capsys):
    repo = make_repo(
        tmp_path,
        {
            "demo/01_ok.py": TEXT,
            "demo/02_fail.py": TEXT,
            "demo/03_after.py": 'open("after.txt", "w").write("x")\n',
        },
    )
    assert main(["--root", str(repo), "--only", "02_fail"]) == 0
    old = {
        p.name: p.read_bytes() for p in out_of(repo, "demo/02_fail").iterdir()
    }
    (repo / "snippets/demo/02_fail.py").write_text(
        "# %%\nprint('before')\n\n# %%\ndef broken():\n    raise RuntimeError('boom')\n\n"
        "broken()\n"
    )
    capsys.readouterr()
    assert main(["--root", str(repo)]) == 1
    out, err = capsys.readouterr()
    assert "[1/3] demo/01_ok done in" in out and "    before\n" in out
    assert "[2/3] demo/02_fail FAILED: snippets/demo/02_fail.py" in err
    assert (
        f'File "{repo / "snippets/demo/02_fail.py"}", line 8, in <module>\n    broken()'
        in err
    )
    assert "line 6, in broken\n    raise RuntimeError('boom')" in err
    assert "RuntimeError: boom" in err and "runner.py" not in err
    assert (
        "[3/3]" not in out + err and not out_of(repo, "demo/03_after").exists()
    )
    assert {
        p.name: p.read_bytes() for p in out_of(repo, "demo/02_fail").iterdir()
    } == old
    assert (out_of(repo, "demo/01_ok") / "meta.json").is_file()
    assert not [
        p for p in out_of(repo, "demo").iterdir() if p.name.startswith(".")
    ]
    assert (
        json.loads(out_of(repo, "demo/demo.ipynb").read_text())["nbformat"] == 4
    )


def test_a_snippet_writing_a_reserved_name_fails(tmp_path, capsys):
    repo = make_repo(
        tmp_path, {"demo/01_meta.py": 'open("meta.json", "w").write("{}")\n'}
    )
    assert main(["--root", str(repo)]) == 1
    assert (
        "wrote 'meta.json', a name the build step reserves"
        in capsys.readouterr().err
    )
    assert not out_of(repo, "demo/01_meta").exists()
    assert not [
        p for p in out_of(repo, "demo").iterdir() if p.name.startswith(".")
    ]


def test_only_selects_by_pattern_substring_or_path(tmp_path, capsys):
    repo = make_repo(
        tmp_path, {"a/01_x.py": "", "a/02_y.py": "", "b/01_x.py": ""}
    )
    found = discover(repo)
    assert [s.key for s in found] == ["a/01_x", "a/02_y", "b/01_x"]
    assert [s.key for s in select(found, "*/01_*")] == ["a/01_x", "b/01_x"]
    assert [s.key for s in select(found, "02")] == ["a/02_y"]
    assert [s.key for s in select(found, "snippets/b/01_x.py")] == ["b/01_x"]
    with pytest.raises(ValueError, match="pattern must be a non-empty string"):
        select(found, " ")
    assert main(["--root", str(repo), "--only", "nothing"]) == 2
    assert "no snippet matches 'nothing'" in capsys.readouterr().err


def test_parse_cells_keeps_line_numbers():
    text = (
        '"""Doc."""\n# requires: cuda\n\n# %% [markdown]\n# # Title\n#\n# Text.\n\n'
        "# %%\n\nx = 1\nprint(x)\n\n# %% Timing\ny = 2\n# %%\n\n"
    )
    assert parse_cells(text) == [
        {
            "cell_type": "code",
            "source": '"""Doc."""\n# requires: cuda',
            "line": 1,
        },
        {"cell_type": "markdown", "source": "# Title\n\nText.", "line": 5},
        {"cell_type": "code", "source": "x = 1\nprint(x)", "line": 11},
        {"cell_type": "code", "source": "y = 2", "line": 15},
    ]


def test_only_modules_a_snippet_imported_make_it_stale(copy, capsys):
    (copy / "kernels/unused.py").write_text(
        "Y = 1\n"
    )  # a new module no snippet imports
    (copy / "kernels/__init__.py").write_text("")
    assert main(["--root", str(copy), "--check", "--only", "01_plot"]) == 0
    (copy / "kernels/unused.py").write_text("Y = 2\n")
    assert main(["--root", str(copy), "--check", "--only", "01_plot"]) == 0
    assert "01_plot" not in capsys.readouterr().out
    (copy / "kernels/ops.py").unlink()
    assert main(["--root", str(copy), "--check", "--only", "01_plot"]) == 1
    assert "stale: kernels/ops.py (removed) changed" in capsys.readouterr().out


def test_meta_without_a_module_record_is_stale_with_its_reason(copy, capsys):
    meta_path = out_of(copy, "demo/02_text/meta.json")
    meta = json.loads(meta_path.read_text())
    del meta["modules"]
    meta_path.write_text(json.dumps({**meta, "kernels_sha256": "0" * 64}))
    snippet = [s for s in discover(copy) if s.stem == "02_text"][0]
    state = status(snippet, out_of(copy))
    assert (state.state, state.reason) == (
        "stale",
        "its meta.json predates the record of the modules it imported",
    )
    assert main(["--root", str(copy), "--check", "--only", "02_text"]) == 1


def test_regenerating_gives_byte_identical_files(copy, capsys):
    folder = out_of(copy, "demo/01_plot")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    notebook = out_of(copy, "demo/demo.ipynb").read_bytes()
    assert main(["--root", str(copy), "--only", "demo/01_plot"]) == 0
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() == before.keys()
    assert {n for n in after if after[n] != before[n]} <= {"meta.json"}
    old, new = (json.loads(m["meta.json"]) for m in (before, after))
    assert {k for k in old if old[k] != new[k]} <= {"date", "duration_s"}
    assert (
        b"<dc:date>1970-01-01" in after["line.svg"]
    )  # SOURCE_DATE_EPOCH, not today
    if (
        old["date"][:10] == new["date"][:10]
    ):  # the notebook shows the day of each run
        assert out_of(copy, "demo/demo.ipynb").read_bytes() == notebook


def test_project_modules_hashes_repository_files_only(tmp_path):
    repo = make_repo(tmp_path, {})
    (repo / ".venv/lib/site-packages").mkdir(parents=True)
    (repo / ".venv/lib/site-packages/installed.py").write_text("Z = 1\n")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/.venv/lib/site-packages']\n"
        "import json, kernels.ops, installed\n"
        "from snippets._build.runner import project_modules\n"
        "print(json.dumps(project_modules(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(repo)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {
        "kernels/__init__.py": sha256_file(repo / "kernels/__init__.py"),
        "kernels/ops.py": sha256_file(repo / "kernels/ops.py"),
    }


def test_git_state_reads_commit_and_dirty(tmp_path):
    repo = make_repo(tmp_path / "repo", {"a/01_x.py": "print(1)\n"})
    generated = out_of(repo)
    assert _build.git_state(repo, generated) == (None, False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert _build.git_state(repo, generated) == (head, False)
    (generated / "a").mkdir(parents=True)
    (generated / "a" / "new.txt").write_text(
        "outputs do not make the sources dirty"
    )
    assert _build.git_state(repo, generated) == (head, False)
    (repo / "kernels/ops.py").write_text("X = 3\n")
    assert _build.git_state(repo, generated) == (head, True)


def test_provenance_line():
    gpu = {
        "gpu": True,
        "device": "NVIDIA H100 80GB HBM3",
        "cuda": "12.8",
        "torch": "2.11.0",
        "triton": "3.6.0",
        "date": "2026-11-23T10:00:00+00:00",
        "commit": "abc1234def",
        "dirty": False,
    }
    assert provenance_line(gpu) == (
        "Generated on NVIDIA H100 80GB HBM3 · CUDA 12.8 · "
        "torch 2.11.0 · triton 3.6.0 · 2026-11-23 · commit abc1234"
    )
    cpu = {
        **gpu,
        "gpu": False,
        "device": "AMD EPYC 7763",
        "cuda": None,
        "torch": "2.13.0+cpu",
        "triton": None,
        "dirty": True,
    }
    assert provenance_line(cpu) == (
        "Generated on CPU (AMD EPYC 7763) · torch 2.13.0+cpu · "
        "2026-11-23 · commit abc1234 (uncommitted changes)"
    )
    with pytest.raises(TypeError, match="meta must be a dict"):
        provenance_line(None)


def fake_nvidia_smi(folder: Path, script: str) -> str:
    """A folder holding an executable `nvidia-smi` that runs `script` (sh); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return str(folder)


def test_nvidia_driver_reads_nvidia_smi_and_tolerates_its_absence(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "PATH",
        fake_nvidia_smi(
            tmp_path / "two",
            (
                '[ "$1 $2" = "--query-gpu=driver_version --format=csv,noheader" ] || exit 3\n'
                "printf '570.86.15\\n570.86.15\\n'\n"
            ),
        ),
    )
    assert _runner.nvidia_driver() == "570.86.15"
    monkeypatch.setenv(
        "PATH", fake_nvidia_smi(tmp_path / "failing", "echo oops; exit 9\n")
    )
    assert _runner.nvidia_driver() is None
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "silent", "exit 0\n"))
    assert _runner.nvidia_driver() is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _runner.nvidia_driver() is None


def test_figure_alt_texts_come_from_page_markers_outside_code(tmp_path):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "generated/demo").mkdir(parents=True)
    (docs / "a.md").write_text(
        "[[ output: demo/01_plot/line.svg | Line from the first page ]]\n"
        "```markdown\n[[ output: demo/01_plot/line.png | An example in code ]]\n```\n"
        "[[ output: demo/01_plot/table.md ]]\n"
    )
    (docs / "guide/b.md").write_text(
        "  [[ output: demo/01_plot/line.svg | Shown again ]]\n"
        "[[ output: demo/02_text/notes.txt | Notes ]]\n"
    )
    (docs / "generated/demo/table.md").write_text(
        "[[ output: demo/01_plot/line.png | No ]]\n"
    )
    assert figure_alt_texts(docs) == {
        "demo/01_plot/line.svg": "Line from the first page",
        "demo/02_text/notes.txt": "Notes",
    }
    assert figure_alt_texts(tmp_path / "absent") == {}


def test_notebook_images_carry_the_alt_text_of_the_page_markers(copy):
    (copy / "docs/demo.md").write_text(
        "# Demo\n\n[[ output: demo/01_plot/line.svg | A rising line, y against x ]]\n"
    )
    nb = _notebook.notebook(copy, out_of(copy), "demo")
    images = {
        mime: output["metadata"][mime]["alt"]
        for cell in nb["cells"]
        for output in cell.get("outputs", [])
        for mime in output.get("data", {})
        if mime.startswith("image/")
    }
    assert images == {
        "image/svg+xml": "A rising line, y against x",
        "image/png": "Figure line.png from snippets/demo/01_plot.py",
    }
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.from_dict(nb))


def test_notebook_opens_with_the_articles_lead_as_notebook_markdown(copy):
    """The title cell carries the article's opening paragraphs, with its math in notebook
    delimiters and its links as text, and without what only the site renders."""
    (copy / "docs/demo.md").write_text(
        "# Demo: the title\n\nA state \\(x_t\\) of [the other page](other.md#part) grows[^1].\n\n"
        "\\[\ny = C x\n\\]\n\n[[ output: demo/01_plot/line.svg | Line ]]\n\n"
        '!!! note "Aside"\n    Only on the site.\n\n## First section\n\nNot in the lead.\n'
    )
    title = _notebook.notebook(copy, out_of(copy), "demo")["cells"][0]["source"]
    assert title.startswith(
        "# Notebook: Demo: the title\n\n"
        "A state $x_t$ of the other page grows.\n\n$$\ny = C x\n$$\n\n"
    )
    for absent in ("[[", "Aside", "Not in the lead", "\\(", "other.md"):
        assert absent not in title


ARTICLE = r"""# Demo: the title

The lead, with \(x_t\).

## Where it starts

No snippet shows here, but the next one needs it:

\[
h_t = A h_{t-1} + B x_t
\]

## The plot

The speedup is [[ value: demo/01_plot/results.json#speedup ]], measured on
[[ device: demo/01_plot ]]; see [the other page](other.md).

$$
y = C x
$$

```python
print("page code")

print("after a blank line")
```

??? example "Snippet"

    ```python
    --8<-- "snippets/demo/01_plot.py"
    ```

[[ output: demo/01_plot/line.svg | A line ]]

A value that is not there: [[ value: demo/01_plot/results.json#absent ]].

### A `code` subsection with \(z\)

Text of the subsection.

## Notes on the text

[[ output: demo/02_text/notes.txt | Notes ]]

## Companion notebook

Not handed out.
"""


def test_notebook_carries_the_articles_sections_before_their_snippets(copy):
    """Each snippet comes after the page's sections that lead up to it and show it,
    with their display formulas and resolved values, and without what only the site
    renders; sections after the last snippet's stay out."""
    (copy / "docs/demo.md").write_text(ARTICLE)
    nb = _notebook.notebook(copy, out_of(copy), "demo")
    sources = [c["source"] for c in nb["cells"]]
    plot = next(
        i for i, s in enumerate(sources) if s.startswith("### A figure")
    )
    before = "\n\n".join(sources[1:plot])
    assert before.startswith("## Where it starts\n\n")
    assert "$$\nh_t = A h_{t-1} + B x_t\n$$" in before  # \[ \] as $$ $$
    assert "$$\ny = C x\n$$" in before
    meta = json.loads((out_of(copy, "demo/01_plot") / "meta.json").read_text())
    assert (
        f"The speedup is 2.35, measured on\n{meta['device']}; see the other page."
        in before
    )
    assert "### A code subsection with z\n\nText of the subsection." in before
    for absent in (
        "page code",
        "after a blank line",
        "--8<--",
        "[[",
        "Snippet",
        "absent",
        "other.md",
        "\\[",
    ):
        assert absent not in before, absent
    text = next(i for i, s in enumerate(sources) if s.startswith("### Text"))
    assert sources[text - 1].startswith("## Notes on the text")
    assert (
        sources[-1] == 'print("timing")'
    )  # the GPU snippet: not shown on the page
    assert "### Timings" in "\n".join(
        sources
    ) and "Not handed out" not in "\n".join(sources)
    headings = [s.partition("\n")[0] for s in sources if s.startswith("#")]
    assert len(headings) == len(set(headings))
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.from_dict(nb))


def test_a_snippets_heading_is_its_docstrings_first_paragraph(copy):
    script = copy / "snippets/demo/01_plot.py"
    script.write_text(
        '"""A title that runs on\nover two lines.\n\nThe prose."""\n'
    )
    snippet = next(s for s in discover(copy) if s.stem == "01_plot")
    assert _notebook.docstring(snippet) == (
        "A title that runs on over two lines",
        "The prose.",
    )
