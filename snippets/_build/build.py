"""The build step: run snippets in fresh processes and publish their outputs atomically.

Each snippet runs through `snippets/_build/runner.py` in a new Python process whose working directory
is an empty temporary folder (MPLBACKEND=Agg, the repository root first on PYTHONPATH so that the modules hashed into meta.json are the
ones imported). Its output lines are streamed as they
come. On success, the files it wrote plus `stdout.txt`, `cells.json` and `meta.json` are copied
into a hidden staging folder beside the destination, which then replaces
`<out>/<article>/<stem>/` by renames. On failure nothing is written and the build stops. An article's companion notebook is written as
soon as its last selected snippet finished (and, after a failure, for the articles begun).

The same snippet on the same machine writes byte-identical files (JSON with sorted keys, figures
without dates or random ids); meta.json differs only in `date` and `duration_s`.

A CPU run never replaces a GPU output, and a `# requires: cuda` snippet is not run at all on a
machine without CUDA. Standard library only (torch is imported by the children).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snippets._build import notebook as _notebook
from snippets._build.provenance import (
    CELLS_FILE,
    META_FILE,
    META_KEYS,
    RESERVED_FILES,
    STDOUT_FILE,
    Snippet,
    discover,
    output_dir,
    read_meta,
    select,
    sha256_file,
    short_date,
    status,
)

RUNNER = Path(__file__).with_name("runner.py")
CUDA_PROBE = "import torch; print(torch.cuda.is_available())"
BUNDLE_FILE = "gpu-bundle.json"
CUDA_KNOWN_ENV = (
    "SNIPPETS_CUDA"  # the commit of a tree that travels without .git
)


class SnippetFailed(Exception):
    """A snippet raised, exited with a non-zero status, or wrote a file name the build reserves."""


def child_env(root: Path, interpret: bool = False) -> dict:
    """The environment of a snippet process: ours, plus MPLBACKEND=Agg and the root on the path.

    With `interpret` (a machine without CUDA) it also sets TRITON_INTERPRET=1 unless the caller
    chose a value, so that published CPU outputs come from the Triton kernels, run in Triton's
    interpreter, rather than from the PyTorch references they would otherwise fall back to.
    """
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), env.get("PYTHONPATH")) if p
    )
    if interpret:
        env.setdefault("TRITON_INTERPRET", "1")
    return env


def cuda_available(root: Path) -> bool:
    """Whether torch sees a CUDA device, asked in a child process (this one never imports torch),
    unless the caller already knows and says so in `SNIPPETS_CUDA` ("1" or "0", as the GPU run
    does, which saves each of its builds the probe)."""
    known = os.environ.get(CUDA_KNOWN_ENV)
    if known in ("0", "1"):
        return known == "1"
    result = subprocess.run(
        [sys.executable, "-c", CUDA_PROBE],
        capture_output=True,
        text=True,
        env=child_env(root),
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "True"


def _git(root: Path, *args: str) -> str | None:
    """The stripped stdout of a git command in `root`, or None when git or the repository fails."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(root: Path, generated: Path) -> tuple[str | None, bool]:
    """(commit, dirty): HEAD's hash and whether the sources differ from it (untracked files
    count; changes under the generated folder and `gpu-bundle.json` do not).

    Where git is unavailable (a copy of the tree without `.git`, on a GPU machine) both come from
    `gpu-bundle.json`, written by `make gpu-bundle` before the copy; the tree counts as dirty
    when the bundle says so or a file it lists changed or went missing. (None, False) when
    neither says anything.
    """
    commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return bundle_state(root)
    pathspec = ["--", ".", f":(exclude){BUNDLE_FILE}"]
    if generated.resolve().is_relative_to(root.resolve()):
        pathspec.append(
            f":(exclude){generated.resolve().relative_to(root.resolve()).as_posix()}"
        )
    porcelain = _git(root, "status", "--porcelain", *pathspec)
    return commit, bool(porcelain)


def bundle_state(root: Path) -> tuple[str | None, bool]:
    """(commit, dirty) from `root/gpu-bundle.json`, or (None, False) without one."""
    path = Path(root) / BUNDLE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, False
    if not isinstance(record, dict) or not isinstance(
        record.get("commit"), str
    ):
        return None, False
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    changed = any(
        not (Path(root) / rel).is_file()
        or sha256_file(Path(root) / rel) != digest
        for rel, digest in files.items()
    )
    return record["commit"], bool(record.get("dirty")) or changed


def _stream(command: list[str], cwd: Path, env: dict) -> int:
    """Run `command`, echoing its merged stdout/stderr line by line as it comes; its exit status."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        for raw in iter(process.stdout.readline, b""):
            sys.stdout.write("    " + raw.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        return process.wait()


def _replace_dir(staging: Path, dest: Path) -> None:
    """Put `staging` in place of `dest` with renames; the old folder is removed afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    os.rename(staging, dest)
    if old is not None:
        shutil.rmtree(old)


def _stage(work: Path, record: Path, staging: Path) -> dict[str, str]:
    """Copy the snippet's files and records into `staging`; return {relative name: sha256}."""
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work)
        if not path.is_file() or "__pycache__" in rel.parts:
            continue
        if rel.as_posix() in RESERVED_FILES:
            raise SnippetFailed(
                f"the snippet wrote {rel.as_posix()!r}, a name the build step "
                f"reserves for itself ({', '.join(RESERVED_FILES)}); rename it"
            )
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / rel)
    for name in (STDOUT_FILE, CELLS_FILE):
        shutil.copy2(record / name, staging / name)
    return {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }


def run_snippet(
    snippet: Snippet,
    root: Path,
    generated: Path,
    keep_gpu: bool,
    interpret: bool = False,
) -> dict | None:
    """Run one snippet and publish its output folder; return its meta, or None if not published.

    `keep_gpu` means a GPU result must not be replaced by a CPU one (the snippet requires CUDA or
    its current output came from a GPU); when the child then saw no GPU nothing is published.

    Raises:
        SnippetFailed: with the traceback (or the reason) when the snippet failed.
    """
    with tempfile.TemporaryDirectory(prefix="snippet-") as tmp:
        work, record = Path(tmp, "work"), Path(tmp, "record")
        work.mkdir()
        record.mkdir()
        start = time.perf_counter()
        code = _stream(
            [
                sys.executable,
                str(RUNNER),
                str(snippet.path),
                str(record),
                str(root),
            ],
            work,
            child_env(root, interpret),
        )
        duration = time.perf_counter() - start
        if code != 0:
            trace = record / "traceback.txt"
            raise SnippetFailed(
                trace.read_text(encoding="utf-8")
                if trace.is_file()
                else f"its process exited with status {code}\n"
            )
        facts = json.loads((record / "facts.json").read_text(encoding="utf-8"))
        if keep_gpu and not facts["gpu"]:
            return None
        dest = output_dir(generated, snippet)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{snippet.stem}.tmp-", dir=dest.parent)
        )
        try:
            files = _stage(work, record, staging)
            commit, dirty = git_state(root, generated)
            meta = {
                "snippet": snippet.rel,
                "snippet_sha256": sha256_file(snippet.path),
                **facts,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "commit": commit,
                "dirty": dirty,
                "duration_s": round(duration, 2),
                "files": files,
            }
            meta = {key: meta[key] for key in META_KEYS if key in meta}
            text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
            (staging / META_FILE).write_text(text, encoding="utf-8")
            _replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta


def build(
    root: Path,
    generated: Path,
    only: str | None = None,
    cuda_snippets_on_cpu: bool = False,
) -> int:
    """Run the selected snippets in order and publish their outputs; the exit status.

    0 when every snippet was published or skipped, 1 when one failed (the build stops there and
    leaves every output folder as it was), 2 when `only` matches no snippet.
    `cuda_snippets_on_cpu` runs the `# requires: cuda` snippets on a machine without CUDA too (at
    their CPU sizes): for the GPU run's dry run, into a scratch copy of the outputs only.
    """
    root, generated = Path(root), Path(generated)
    snippets = select(discover(root), only)
    if not snippets:
        print(
            f"error: no snippet matches {only!r} under {root / 'snippets'}"
            if only
            else f"no snippets found under {root / 'snippets'}",
            file=sys.stderr,
        )
        return 2 if only else 0
    has_cuda, code = cuda_available(root), 0
    last = {snippet.article: number for number, snippet in enumerate(snippets)}
    begun: list[str] = []
    try:
        for number, snippet in enumerate(snippets):
            label = f"[{number + 1}/{len(snippets)}] {snippet.key}"
            if snippet.article not in begun:
                begun.append(snippet.article)
            old = read_meta(output_dir(generated, snippet))
            keep_gpu = snippet.requires_cuda or bool(old and old.get("gpu"))
            if cuda_snippets_on_cpu and not (old and old.get("gpu")):
                keep_gpu = False
            if keep_gpu and not has_cuda:
                print(
                    f"{label} skipped: "
                    + (
                        f"keeping the GPU output from {short_date(old)} on {old.get('device')} "
                        "(this machine has no GPU)"
                        if old and old.get("gpu")
                        else "requires CUDA; it waits for a GPU run (nothing written)"
                    ),
                    flush=True,
                )
            else:
                print(f"{label} ...", flush=True)
                try:
                    meta = run_snippet(
                        snippet,
                        root,
                        generated,
                        keep_gpu,
                        interpret=not has_cuda,
                    )
                except SnippetFailed as failure:
                    print(
                        f"\n{label} FAILED: {snippet.rel}\n\n{failure}\nStopped: later "
                        "snippets were not run and existing outputs were left as they were.",
                        file=sys.stderr,
                        flush=True,
                    )
                    code = 1
                    break
                print(
                    f"{label} done in {meta['duration_s']:.1f} s"
                    if meta
                    else f"{label} not published: its process saw no GPU",
                    flush=True,
                )
            if last[snippet.article] == number:
                _write_notebook(root, generated, snippet.article, begun)
    finally:
        for article in list(begun):
            _write_notebook(root, generated, article, begun)
    return code


def _write_notebook(
    root: Path, generated: Path, article: str, pending: list[str]
) -> None:
    """Write `article`'s companion notebook and take it off `pending`."""
    path = _notebook.write_notebook(root, generated, article)
    pending.remove(article)
    print(f"wrote {path}", flush=True)


def check(root: Path, generated: Path, only: str | None = None) -> int:
    """Report every output that is missing, stale or waiting for a GPU run; the exit status.

    1 when an output that a run on this kind of machine could update is missing or stale; 0 when
    everything is fresh or only GPU runs are pending (so `--check` can gate CPU-only CI).
    """
    hashes, pending, failing = {}, 0, 0
    for snippet in select(discover(root), only):
        state = status(snippet, generated, hashes)
        if state.state == "fresh":
            continue
        pending += 1
        failing += not state.needs_gpu
        since = (
            f" since the run of {short_date(state.meta)}" if state.meta else ""
        )
        where = " on a GPU machine" if state.needs_gpu else ""
        print(
            f"{snippet.key}: {state.state}: {state.reason}{since} "
            f"(regenerate{where}: {snippet.command})"
        )
    if not pending:
        print("all outputs are fresh")
    elif not failing:
        print(
            "only GPU runs are pending: every output a CPU run can update is fresh"
        )
    return 1 if failing else 0


def list_snippets(root: Path, generated: Path, only: str | None = None) -> int:
    """Print every snippet with the state of its output; exit status 0."""
    hashes = {}
    for snippet in select(discover(root), only):
        state = status(snippet, generated, hashes)
        tag = "  [requires cuda]" if snippet.requires_cuda else ""
        print(f"{snippet.key:40} {state.state}{tag}")
    return 0
