"""`python -m snippets`: run the snippets and write their outputs under docs/generated/.

    python -m snippets                         # run every snippet, in order
    python -m snippets --only flash_attention/02_memory   # a full name, fnmatch pattern or substring
    python -m snippets --check                 # list missing / stale / waiting outputs
    python -m snippets --list                  # every snippet with the state of its output

The GPU run (`make gpu-run`, `snippets/_build/gpu.py`) calls it once per snippet; its dry run
adds `--cuda-snippets-on-cpu` with a scratch `--out`.

Exit status: 0 on success; 1 when a snippet failed (the build stops there) or, with --check,
when an output that a run on a CPU could update is missing or stale (outputs that only a GPU run
can update are listed but do not fail the check); 2 for bad arguments or when --only matches
no snippet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snippets._build import build as _build

REPOSITORY = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(
        prog="python -m snippets",
        description="Run the snippets (each in a fresh process) and publish their outputs, "
        "or report which outputs are missing or stale.",
    )
    parser.add_argument(
        "--only",
        metavar="PATTERN",
        help="run only snippets whose <article>/<stem> matches this fnmatch "
        "pattern or contains this text",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="run nothing; list outputs that are missing, stale or waiting for a "
        "GPU run, and exit 1 if one that a CPU run can update is not fresh",
    )
    mode.add_argument(
        "--list",
        action="store_true",
        help="run nothing; list the snippets with the state of their outputs",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPOSITORY,
        help="the repository root (default: the one holding this package)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the folder of generated outputs (default: ROOT/docs/generated)",
    )
    # For the GPU run's dry run only (python -m snippets._build.gpu): run the `# requires: cuda`
    # snippets on a machine without CUDA too, into a scratch --out, never docs/generated.
    parser.add_argument(
        "--cuda-snippets-on-cpu", action="store_true", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); return the exit status."""
    args = parse_args(argv)
    root = args.root.resolve()
    out = (
        args.out if args.out is not None else root / "docs" / "generated"
    ).resolve()
    if not (root / "snippets").is_dir():
        print(
            f"error: --root must be a repository with a snippets/ folder, got {root}",
            file=sys.stderr,
        )
        return 2
    if args.cuda_snippets_on_cpu and (
        args.out is None or out == root / "docs" / "generated"
    ):
        print(
            "error: --cuda-snippets-on-cpu writes CPU outputs of GPU snippets: give a scratch "
            f"--out, not {out}",
            file=sys.stderr,
        )
        return 2
    if args.check:
        return _build.check(root, out, args.only)
    if args.list:
        return _build.list_snippets(root, out, args.only)
    return _build.build(
        root, out, args.only, cuda_snippets_on_cpu=args.cuda_snippets_on_cpu
    )


if __name__ == "__main__":
    sys.exit(main())
