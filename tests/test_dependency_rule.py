"""The dependency rule, read from the sources with `ast` (nothing here imports them).

Snippets import `kernels`; the build tool (`snippets/__init__.py`, `snippets/__main__.py`,
`snippets/_build/`) imports the standard library only, plus mkdocs on its MkDocs side, so never
torch nor `kernels` (it runs the snippets in child processes); nothing under `kernels/` imports
the build tool or matplotlib.
"""

import ast
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BUILD_TOOL = sorted(
    [
        REPOSITORY / "snippets/__init__.py",
        REPOSITORY / "snippets/__main__.py",
        *(REPOSITORY / "snippets/_build").glob("*.py"),
    ]
)
KERNELS = sorted((REPOSITORY / "kernels").rglob("*.py"))
MKDOCS_SIDE = {"hook.py": {"mkdocs"}}


def imported_packages(source: str) -> set[str]:
    """The top-level names of every absolute import in `source`, wherever it sits (a function's
    lazy import counts too); relative imports stay inside their package and are left out."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        ):
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_sees_every_kind_of_import():
    source = (
        "import os, torch.nn\nfrom matplotlib import pyplot\nfrom . import sibling\n"
        "def f():\n    import kernels.ops as k\n"
    )
    assert imported_packages(source) == {"os", "torch", "matplotlib", "kernels"}


def test_the_files_are_found():
    assert len(BUILD_TOOL) >= 7 and len(KERNELS) >= 5


@pytest.mark.parametrize(
    "path", BUILD_TOOL, ids=lambda p: p.relative_to(REPOSITORY).as_posix()
)
def test_build_tool_imports_the_standard_library_only(path):
    allowed = (
        set(sys.stdlib_module_names)
        | {"snippets"}
        | MKDOCS_SIDE.get(path.name, set())
    )
    imports = imported_packages(path.read_text(encoding="utf-8"))
    assert not imports - allowed, (
        f"{path.name} imports {sorted(imports - allowed)}"
    )
    assert not imports & {"torch", "triton", "kernels", "numpy", "matplotlib"}


@pytest.mark.parametrize(
    "path", KERNELS, ids=lambda p: p.relative_to(REPOSITORY).as_posix()
)
def test_kernels_import_neither_the_build_tool_nor_matplotlib(path):
    imports = imported_packages(path.read_text(encoding="utf-8"))
    assert not imports & {"snippets", "matplotlib"}, (
        f"{path} imports {sorted(imports)}"
    )
