"""The GPU run: one prepared command for a short GPU loan, and the way its
outputs come back.

    python -m snippets._build.gpu run --out DIR [--budget 540]
                                                   # make gpu-run OUT=DIR
    python -m snippets._build.gpu unpack ARCHIVE   # make gpu-unpack FILE=...
    python -m snippets._build.gpu bundle           # make gpu-bundle
    python -m snippets._build.gpu wheels           # make gpu-wheels
    python -m snippets._build.gpu mamba [--python PY]  # make gpu-mamba

`run` does the most valuable work first and keeps what it has when it is cut
short. Its steps, each a child process under its own time cap inside the global
budget:

1. `wheels`: installs the optional baseline wheels of `.gpu-wheels/` (from
   `make gpu-wheels` and `make gpu-mamba`) into a temporary folder put on the
   children's PYTHONPATH, when there are any;
2. `environment`: `tests/gpu_environment.py`: nvidia-smi, versions, measured
   copy bandwidth and matrix product rate (`environment.json` in OUT);
3. `smoke`: `tests/kernels/test_gpu_smoke.py`, every op forward and backward in
   three dtypes against its reference; each op's verdict goes to `smoke.json`,
   and a snippet that times an op whose smoke failed or did not finish is not
   run, so a benchmark of a wrong kernel is never published;
4. one step per `# requires: cuda` snippet, most valuable first (`PRIORITY`),
   each through `python -m snippets --only <snippet>`: a snippet killed by its
   cap leaves its previous output untouched (the build step publishes by rename)
   and the run goes on. The other snippets keep their CPU outputs, which a CPU
   machine can refresh;
5. `tests`: the rest of the CUDA tests (`tests/kernels`, in parallel with
   pytest-xdist and a per-test timeout with pytest-timeout when they are
   installed), with what budget is left.

After every step it rewrites, in OUT: `outputs.tar.gz` (every output folder
under docs/generated/ that the run changed, as
`generated/<article>/<stem>/...`), `steps.txt` (step, exit code, seconds, cap)
and `run.log` (everything the steps printed); at the end it prints a table of
the steps and the measured ceilings. Children never get `TRITON_INTERPRET` on a
GPU machine (triton 3.6's interpreter breaks with numpy 2.5).

Without CUDA the same steps run as a dry run at CPU sizes (the
`# requires: cuda` snippets too, through the interpreter), into a scratch copy
of docs/generated/ that is removed afterwards: the archive still comes back, so
the command is tested where there is no GPU.

Provenance without `.git`: `bundle` writes `gpu-bundle.json` at the root
(commit, dirty, and the sha256 of every file git knows), which travels with the
working tree; the build step reads it where git is unavailable (see
`build.git_state`).

`unpack` puts the archive's outputs into docs/generated/, each folder whole and
by rename, and refuses (naming it and why) an output whose snippet or imported
modules no longer match the working tree, whose files do not match their
meta.json, that would replace a GPU output by a CPU one, or (without
`--accept-cpu`) a CPU output of a `# requires: cuda` snippet. Then it rewrites
the companion notebooks of the articles it touched.

Standard library only; torch is imported by the children.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from snippets._build import build as _build
from snippets._build import notebook as _notebook
from snippets._build.provenance import (
    META_FILE,
    Snippet,
    discover,
    output_dir,
    read_meta,
    select,
    sha256_file,
    status,
)

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_BUDGET = 540
ARCHIVE, STEPS, LOG, ENVIRONMENT, SMOKE = (
    "outputs.tar.gz",
    "steps.txt",
    "run.log",
    "environment.json",
    "smoke.json",
)
ARCHIVE_ROOT = "generated"
BUNDLE = _build.BUNDLE_FILE
WHEELS = ".gpu-wheels"
ENVIRONMENT_SCRIPT = "tests/gpu_environment.py"
SMOKE_TESTS = "tests/kernels/test_gpu_smoke.py"
# where the smoke appends its JSON lines (see smoke_verdicts)
SMOKE_LOG_ENV = "GPU_SMOKE_LOG"
CUDA_TESTS = "tests/kernels"
# The articles whose timings matter most come first; any other
# `# requires: cuda` snippet follows in alphabetical order.
PRIORITY = (
    "flash_attention",
    "linear_attention",
    "mamba",
    "ssd",
    "speculative_decoding",
    "medusa",
    "multi_token_prediction",
)
# The ops each article's benchmark times: a failing smoke of one of them skips
# the benchmark.
ARTICLE_OPS = {
    "flash_attention": {"flash_attention"},
    "linear_attention": {"linear_attention", "linear_attention_step"},
    "mamba": {"selective_scan", "selective_scan_step"},
    "ssd": {"ssd", "selective_scan"},
    "speculative_decoding": {"flash_attention"},
    "medusa": {"tree_attention", "flash_attention"},
    "multi_token_prediction": {"flash_attention"},
}
CAPS = {
    "wheels": 60,
    "environment": 90,
    "smoke": 150,
    "snippet": 150,
    "tests": 600,
}
FIRST_SNIPPET_CAP = 200  # the flash attention benchmark has the most to measure
RESERVE = 10  # seconds kept back for packing and the summary
MIN_STEP = 15  # a step with less time than this left is not started


class Run:
    """One GPU run: the budget, the log, the steps done, and the outputs folder
    it changes.
    """

    def __init__(
        self,
        root: Path,
        out: Path,
        budget: float,
        generated: Path,
        has_cuda: bool,
    ):
        self.root, self.out, self.generated, self.has_cuda = (
            root,
            out,
            generated,
            has_cuda,
        )
        self.deadline = time.monotonic() + budget
        self.budget = budget
        # (step, status, seconds, cap)
        self.steps: list[tuple[str, str, float, float]] = []
        self.before = _folder_hashes(generated)
        self.log = open(out / LOG, "a", encoding="utf-8")
        self.pythonpath: list[str] = [str(root)]
        self.scratch: list[Path] = []  # temporary folders removed at the end

    def say(self, text: str = "") -> None:
        """Print `text` and append it to the log."""
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def left(self) -> float:
        """Seconds left for steps (the reserve excluded)."""
        return self.deadline - time.monotonic() - RESERVE

    def env(self) -> dict:
        """The children's environment: no TRITON_INTERPRET on a GPU, the wheels
        on the path.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env.pop("TRITON_INTERPRET", None)
        if not self.has_cuda:
            env["TRITON_INTERPRET"] = "1"
        # saves each build a probe
        env[_build.CUDA_KNOWN_ENV] = "1" if self.has_cuda else "0"
        env["PYTHONPATH"] = os.pathsep.join(
            self.pythonpath
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        return env

    def step(
        self,
        name: str,
        command: list[str],
        cap: float,
        cwd: Path | None = None,
        extra_env: dict | None = None,
    ) -> str:
        """Run `command` as step `name` under `min(cap, time left)`; record and
        return its status ("0", another exit code, "timeout" or "skipped: ..."),
        then repack the outputs."""
        cap = min(cap, self.left())
        if cap < MIN_STEP:
            return self.record(name, "skipped: out of budget", 0.0, 0.0)
        self.say(
            f"\n=== {name} (cap {cap:.0f} s, {self.left():.0f} s left) ==="
        )
        self.say("$ " + " ".join(command))
        began = time.monotonic()
        code = _run_capped(
            command,
            cwd or self.root,
            {**self.env(), **(extra_env or {})},
            cap,
            self.say,
        )
        return self.record(
            name,
            "timeout" if code is None else str(code),
            time.monotonic() - began,
            cap,
        )

    def record(self, name: str, state: str, seconds: float, cap: float) -> str:
        """Note a step's outcome, rewrite steps.txt and the archive."""
        self.steps.append((name, state, seconds, cap))
        if state.startswith("skipped"):
            self.say(f"\n=== {name}: {state} ===")
        lines = ["step\tstatus\tseconds\tcap"] + [
            f"{n}\t{s}\t{sec:.1f}\t{c:.0f}" for n, s, sec, c in self.steps
        ]
        _write_atomic(self.out / STEPS, ("\n".join(lines) + "\n").encode())
        self.pack()
        return state

    def changed_folders(self) -> list[str]:
        """The output folders (`<article>/<stem>`) whose files differ from the
        start of the run.
        """
        now = _folder_hashes(self.generated)
        return sorted(key for key in now if now[key] != self.before.get(key))

    def pack(self) -> None:
        """Rewrite OUT/outputs.tar.gz with every output folder the run changed
        (by rename).
        """
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for key in self.changed_folders():
                folder = self.generated / key
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    name = path.relative_to(folder).as_posix()
                    info = tar.gettarinfo(
                        str(path), f"{ARCHIVE_ROOT}/{key}/{name}"
                    )
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        _write_atomic(self.out / ARCHIVE, buffer.getvalue())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _folder_hashes(generated: Path) -> dict[str, str]:
    """{"<article>/<stem>": hash of its files' names and contents} for every
    output folder.
    """
    found = {}
    for meta in sorted(Path(generated).glob(f"*/*/{META_FILE}")):
        folder = meta.parent
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(sha256_file(path).encode())
        found[f"{folder.parent.name}/{folder.name}"] = digest.hexdigest()
    return found


def _run_capped(
    command: list[str], cwd: Path, env: dict, cap: float, say
) -> int | None:
    """Run `command` in its own process group, passing each output line to
    `say`; its exit status, or None when it ran past `cap` seconds and its whole
    group was killed."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + cap
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        pending = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if pending:
                    say("    " + pending.decode("utf-8", "replace"))
                say(f"    (killed after {cap:.0f} s)")
                return None
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                say("    " + line.decode("utf-8", "replace"))
    if pending:
        say("    " + pending.decode("utf-8", "replace"))
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def ordered_cuda_snippets(root: Path, only: str | None = None) -> list[Snippet]:
    """The `# requires: cuda` snippets, most valuable first (`PRIORITY`, then
    alphabetical).
    """
    snippets = [s for s in select(discover(root), only) if s.requires_cuda]
    rank = {article: number for number, article in enumerate(PRIORITY)}
    return sorted(
        snippets,
        key=lambda s: (rank.get(s.article, len(rank)), s.article, s.stem),
    )


def smoke_verdicts(log: Path) -> dict[str, dict]:
    """{op: {"verdict", "expected", "passed", "failed"}} from the smoke's
    JSON-lines log.

    The smoke writes `{"expected": [case ids]}` when it is collected and
    `{"case": id, "outcome": "passed" | "failed"}` after each case; a case id
    starts with its op (`ssd-bf16-1x77x4`). An op "passed" when every expected
    case of it passed, "failed" when one failed, and is "incomplete" otherwise
    (the smoke ran out of time before its last case): only ops that passed are
    trusted, even when the smoke was cut short or ran its cases in parallel.
    """
    expected: set[str] = set()
    outcomes: dict[str, str] = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(record.get("expected"), list):
                expected.update(map(str, record["expected"]))
            elif isinstance(record.get("case"), str):
                outcomes[record["case"]] = str(record.get("outcome"))
    ops: dict[str, dict] = {}
    for case in sorted(expected | set(outcomes)):
        op = ops.setdefault(
            case.split("-", 1)[0], {"expected": 0, "passed": 0, "failed": []}
        )
        op["expected"] += case in expected
        if outcomes.get(case) == "passed":
            op["passed"] += 1
        elif case in outcomes:
            op["failed"].append(case)
    for op in ops.values():
        op["verdict"] = (
            "failed"
            if op["failed"]
            else "passed"
            if op["passed"] >= op["expected"] > 0
            else "incomplete"
        )
    return ops


def _has_module(python: str, module: str, env: dict) -> bool:
    """Whether `python` can import `module`."""
    result = subprocess.run(
        [python, "-c", f"import {module}"],
        capture_output=True,
        env=env,
        check=False,
    )
    return result.returncode == 0


def run(
    root: Path,
    out: Path,
    budget: float,
    only: str | None = None,
    tests: list[str] | None = None,
    smoke: str = SMOKE_TESTS,
) -> int:
    """The GPU run (see the module docstring); the exit status.

    0 when every step that ran passed (the tests step may run out of time: it
    takes what budget is left), 1 when a step failed or a snippet ran past its
    cap.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in (ARCHIVE, STEPS, LOG, ENVIRONMENT, SMOKE):
        (out / name).unlink(missing_ok=True)
    has_cuda = _build.cuda_available(root)
    real = root / "docs" / "generated"
    scratch = None
    if has_cuda:
        generated = real
    else:  # the dry run writes into a scratch copy of the outputs
        scratch = Path(tempfile.mkdtemp(prefix="gpu-dry-run-"))
        generated = scratch / "generated"
        if real.is_dir():
            shutil.copytree(real, generated)
        else:
            generated.mkdir()
    python = sys.executable
    state = Run(root, out, budget, generated, has_cuda)
    try:
        commit, dirty = _build.git_state(root, real)
        state.say(
            f"GPU run of {root} at commit "
            f"{commit or 'unknown'}"
            f"{' (uncommitted changes)' if dirty else ''}, "
            f"budget {budget:.0f} s, "
            + (
                "on CUDA"
                if has_cuda
                else "DRY RUN without CUDA, at CPU sizes, into a "
                "scratch copy of docs/generated/"
            )
        )
        if commit is None:
            state.say(
                "warning: no git and no gpu-bundle.json: outputs will name no "
                "commit (run `make gpu-bundle` before copying the tree)"
            )
        _install_wheels(state, python)
        state.step(
            "environment",
            [python, ENVIRONMENT_SCRIPT, str(out / ENVIRONMENT)],
            CAPS["environment"],
        )
        ops = _smoke(state, python, smoke)
        for number, snippet in enumerate(ordered_cuda_snippets(root, only)):
            name = f"snippet {snippet.key}"
            if not ops:
                state.record(name, "skipped: no smoke verdict", 0.0, 0.0)
                continue
            needed = sorted(ARTICLE_OPS.get(snippet.article, set()))
            blocked = [
                f"{op} {ops[op]['verdict'] if op in ops else 'not smoked'}"
                for op in needed
                if ops.get(op, {}).get("verdict") != "passed"
            ]
            if blocked:
                state.record(
                    name, f"skipped: smoke {', '.join(blocked)}", 0.0, 0.0
                )
                continue
            command = [
                python,
                "-m",
                "snippets",
                "--only",
                snippet.key,
                "--root",
                str(root),
                "--out",
                str(generated),
            ]
            if not has_cuda:
                command.append("--cuda-snippets-on-cpu")
            # From the folder that holds this build tool, so that `-m snippets`
            # finds it.
            result = state.step(
                name,
                command,
                FIRST_SNIPPET_CAP if number == 0 else CAPS["snippet"],
                cwd=REPOSITORY,
            )
            if result == "timeout":
                _after_kill(root, generated, snippet)
        _tests(state, python, tests)
    finally:
        state.pack()
        _summary(state)
        state.log.close()
        for folder in state.scratch + (
            [scratch] if scratch is not None else []
        ):
            shutil.rmtree(folder, ignore_errors=True)
    return (
        0
        if all(
            result == "0"
            or result.startswith("skipped")
            or name.startswith("wheel ")  # an optional baseline
            or (name == "tests" and result == "timeout")
            for name, result, _, _ in state.steps
        )
        else 1
    )


def _install_wheels(state: Run, python: str) -> None:
    """Install the wheels of `.gpu-wheels/` into a temporary folder on the
    children's path, one step per wheel: a wheel that does not install here
    (built for another Python, say) leaves the others, and the run goes on
    without that baseline.
    """
    wheels = sorted((state.root / WHEELS).glob("*.whl"))
    if not wheels:
        state.say(
            f"no optional baseline wheels ({WHEELS}/ is empty or missing): the "
            "benchmarks skip those baselines"
        )
        return
    target = Path(tempfile.mkdtemp(prefix="gpu-wheels-"))
    state.scratch.append(target)
    installed = 0
    for wheel in wheels:
        result = state.step(
            f"wheel {wheel.name.split('-')[0]}",
            [
                python,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
                "--target",
                str(target),
                str(wheel),
            ],
            CAPS["wheels"],
        )
        installed += result == "0"
    if installed:
        state.pythonpath.append(str(target))


def _smoke(state: Run, python: str, smoke: str) -> dict[str, dict]:
    """Run the op smoke (in parallel when pytest-xdist is installed), write
    smoke.json and return its verdicts (see `smoke_verdicts`)."""
    log = Path(tempfile.mkdtemp(prefix="gpu-smoke-")) / "smoke.jsonl"
    state.scratch.append(log.parent)
    env = state.env()
    command = [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "smoke",
        smoke,
    ]
    if state.has_cuda and _has_module(python, "xdist", env):
        command += ["-n", "4"]
    if _has_module(python, "pytest_timeout", env):
        command.append("--timeout=120")
    result = state.step(
        "smoke", command, CAPS["smoke"], extra_env={SMOKE_LOG_ENV: str(log)}
    )
    ops = smoke_verdicts(log)
    report = {"status": result, "ops": ops}
    _write_atomic(
        state.out / SMOKE,
        (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
    )
    for verdict in ("failed", "incomplete"):
        names = sorted(
            op for op, facts in ops.items() if facts["verdict"] == verdict
        )
        if names:
            state.say(
                f"smoke {verdict.upper()} for: {', '.join(names)} (their "
                "benchmarks are skipped)"
            )
    if not ops:
        state.say(f"smoke gave no verdict ({result}): no benchmark runs")
    return ops


def _tests(state: Run, python: str, tests: list[str] | None) -> None:
    """The rest of the CUDA tests, with what budget is left."""
    env = state.env()
    command = [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not smoke",
        *(tests or [CUDA_TESTS]),
    ]
    if state.has_cuda and _has_module(python, "xdist", env):
        command += ["-n", "8"]
    if _has_module(python, "pytest_timeout", env):
        command.append("--timeout=120")
    state.step("tests", command, CAPS["tests"])


def _after_kill(root: Path, generated: Path, snippet: Snippet) -> None:
    """Tidy up after a snippet's build was killed: its staging folders go, its
    notebook is rewritten (the previous output stayed in place)."""
    folder = output_dir(generated, snippet).parent
    for leftover in folder.glob(f".{snippet.stem}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    _notebook.write_notebook(root, generated, snippet.article)


def _summary(state: Run) -> None:
    """Print the table of steps and the measured ceilings."""
    state.say("\n=== summary ===")
    width = max([len(s[0]) for s in state.steps] + [4])
    state.say(f"{'step':{width}}  {'status':28} {'seconds':>8} {'cap':>5}")
    for name, result, seconds, cap in state.steps:
        state.say(f"{name:{width}}  {result:28} {seconds:8.1f} {cap:5.0f}")
    environment = state.out / ENVIRONMENT
    if environment.is_file():
        facts = json.loads(environment.read_text(encoding="utf-8"))
        state.say(
            f"device {facts.get('device')}: copy {facts.get('copy_gb_per_s')} "
            f"GB/s, {facts.get('matmul_dtype')} matmul "
            f"{facts.get('matmul_tflops')} TFLOP/s (torch "
            f"{facts.get('torch')}, CUDA {facts.get('cuda')}, triton "
            f"{facts.get('triton')})"
        )
    changed = state.changed_folders()
    state.say(
        f"{len(changed)} output folder(s) packed into {state.out / ARCHIVE}"
        + (": " + ", ".join(changed) if changed else "")
    )
    used = state.budget - (state.deadline - time.monotonic())
    state.say(f"used {used:.0f} s of {state.budget:.0f} s")


# --- unpack -------------------------------------------------------------------


def _refusal(
    snippet: Snippet | None,
    meta: dict,
    names: dict[str, bytes],
    current: dict | None,
    accept_cpu: bool,
) -> str | None:
    """Why an archived output folder may not be unpacked, or None
    when it may.
    """
    if snippet is None:
        return "no such snippet in this working tree"
    if meta.get("snippet_sha256") != sha256_file(snippet.path):
        return f"{snippet.rel} changed since the run"
    modules = meta.get("modules")
    if not isinstance(modules, dict):
        return "its meta.json has no record of the modules it imported"
    changed = [
        rel
        for rel, digest in sorted(modules.items())
        if not (snippet.root / rel).is_file()
        or sha256_file(snippet.root / rel) != digest
    ]
    if changed:
        return f"{', '.join(changed)} changed since the run"
    files = {
        name: hashlib.sha256(data).hexdigest()
        for name, data in names.items()
        if name != META_FILE
    }
    if meta.get("files") != files:
        return "its files do not match its meta.json"
    if current and current.get("gpu") and not meta.get("gpu"):
        return "it would replace a GPU output by a CPU one"
    if snippet.requires_cuda and not meta.get("gpu") and not accept_cpu:
        return (
            "a CPU output of a `# requires: cuda` snippet (a dry run's; "
            "--accept-cpu takes it)"
        )
    return None


def unpack(
    archive: Path, root: Path, generated: Path, accept_cpu: bool = False
) -> int:
    """Put the archive's output folders into `generated`; 0 when all were taken,
    1 when one was refused, 2 when the archive is unreadable or holds something
    else than output folders."""
    root, generated = Path(root).resolve(), Path(generated).resolve()
    folders: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if member.isdir():
                    continue
                if (
                    not member.isfile()
                    or len(parts) < 4
                    or parts[0] != ARCHIVE_ROOT
                    or any(p in ("", ".", "..") for p in parts)
                    or member.name.startswith("/")
                ):
                    print(
                        f"error: {archive} holds {member.name!r}, not a file "
                        "of an output folder "
                        f"({ARCHIVE_ROOT}/<article>/<stem>/<file>)",
                        file=sys.stderr,
                    )
                    return 2
                key = f"{parts[1]}/{parts[2]}"
                folders.setdefault(key, {})["/".join(parts[3:])] = (
                    tar.extractfile(member).read()
                )
    except (OSError, tarfile.TarError) as error:
        print(f"error: cannot read {archive}: {error}", file=sys.stderr)
        return 2
    snippets = {s.key: s for s in discover(root)}
    taken, refused, articles = [], [], set()
    for key, names in sorted(folders.items()):
        try:
            meta = json.loads(names[META_FILE]) if META_FILE in names else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            refused.append((key, "no readable meta.json"))
            continue
        snippet = snippets.get(key)
        current = read_meta(output_dir(generated, snippet)) if snippet else None
        reason = _refusal(snippet, meta, names, current, accept_cpu)
        if reason:
            refused.append((key, reason))
            continue
        dest = output_dir(generated, snippet)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{snippet.stem}.tmp-", dir=dest.parent)
        )
        try:
            for name, data in names.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
            _build._replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        taken.append(key)
        articles.add(snippet.article)
    for article in sorted(articles):
        _notebook.write_notebook(root, generated, article)
    for key in taken:
        meta = read_meta(generated / key)
        where = (
            meta.get("device")
            if meta.get("gpu")
            else f"CPU ({meta.get('device')})"
        )
        print(
            f"unpacked {key} ({where}, {str(meta.get('date'))[:10]}, "
            f"{status(snippets[key], generated).state})"
        )
    for key, reason in refused:
        print(f"REFUSED {key}: {reason}")
    print(
        f"{len(taken)} output(s) unpacked into {generated}, {len(refused)} "
        "refused"
    )
    return 1 if refused else 0


# --- bundle and wheels --------------------------------------------------------


def bundle(root: Path) -> int:
    """Write `gpu-bundle.json`: the commit, whether the tree is dirty, and the
    sha256 of every file git tracks or would add (the tree that travels), for
    the build step to read where git is unavailable. 1 when git cannot say."""
    root = Path(root).resolve()
    commit, dirty = _build.git_state(root, root / "docs" / "generated")
    listed = _build._git(
        root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    )
    if commit is None or listed is None:
        print(
            "error: gpu-bundle needs a git checkout with a commit",
            file=sys.stderr,
        )
        return 1
    files = {}
    for rel in sorted(set(filter(None, listed.split("\0")))):
        path = root / rel
        if (
            rel != BUNDLE
            and not rel.startswith("docs/generated/")
            and path.is_file()
        ):
            files[rel] = sha256_file(path)
    record = {
        "commit": commit,
        "dirty": dirty,
        "files": files,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (root / BUNDLE).write_text(
        json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(
        f"wrote {root / BUNDLE}: commit {commit[:12]}"
        + (" with uncommitted changes" if dirty else "")
        + f", {len(files)} files"
    )
    return 0


WHEEL_SPECS = ("flash-linear-attention", "fla-core", "einops")


def wheels(root: Path) -> int:
    """Download the optional baselines' pure-Python wheels for Python 3.12 into
    `.gpu-wheels/`: flash-linear-attention with fla-core and einops, from PyPI,
    without their dependencies (the GPU machine has torch, triton and
    transformers).

    mamba-ssm is not among them: PyPI has it as a source package only, and
    although it builds without its CUDA extension
    (`MAMBA_SKIP_CUDA_BUILD=TRUE`), its package `__init__` imports that
    extension (`selective_scan_cuda`), so its Triton SSD path cannot be imported
    either.
    """
    target = Path(root).resolve() / WHEELS
    target.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "py",
        "--abi",
        "none",
        "--platform",
        "any",
        "--dest",
        str(target),
        *WHEEL_SPECS,
    ]
    code = subprocess.run(command, check=False).returncode
    found = sorted(target.glob("*.whl"))
    size = sum(p.stat().st_size for p in found)
    print(
        f"{target}: {len(found)} wheel(s), {size / 2**20:.1f} MiB (the tree "
        "that travels may carry 64 MiB in all)"
    )
    return code


# mamba-ssm, built from source for the GPU machine (`make gpu-mamba`): PyPI has
# it as a source package only, and its package imports its CUDA extension.
MAMBA_SSM = "mamba-ssm==2.3.2.post1"
# What the extension is built for and against: the GPU machine's chip (H200,
# sm_90), Python and torch (the extension links against that torch and imports
# only beside it).
GPU_ARCH = "9.0"
GPU_PYTHON_VERSION = "3.12"
GPU_TORCH = "2.11.0"
BUILD = ".gpu-build"  # git-ignored: the build's Python and sources
_GENCODE = re.compile(
    r'cc_flag\.append\("(?:-gencode|arch=compute_\d+,code=sm_\d+)"\)'
)


def mamba_setup_for_one_arch(text: str) -> str:
    """mamba-ssm's `setup.py` without its fixed list of GPU architectures, so
    that torch's `TORCH_CUDA_ARCH_LIST` chooses them: one architecture instead
    of nine builds in minutes on a laptop. Raises ValueError when the text has
    no such list or keeps an architecture after the edit (another version of
    mamba-ssm: check `MAMBA_SSM`)."""
    patched, count = _GENCODE.subn("pass", text)
    if count == 0 or "arch=compute_" in patched:
        raise ValueError(
            "mamba-ssm's setup.py: expected its list of `cc_flag.append("
            '"-gencode")` / `"arch=compute_NN,code=sm_NN"` lines, found '
            f"{count} such lines"
            + (" and others left over" if count else "")
            + f"; this build knows {MAMBA_SSM}"
        )
    return patched


def _check_build_python(python: str, torch_version: str) -> None:
    """Raise SystemExit unless `python` is Python GPU_PYTHON_VERSION with a
    CUDA build of torch `torch_version`."""
    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys, torch; print('%d.%d' % sys.version_info[:2], "
            "torch.__version__, torch.version.cuda)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"--python {python}: cannot import torch there:\n{probe.stderr}"
        )
    version, torch_found, cuda = probe.stdout.split()
    if (
        version != GPU_PYTHON_VERSION
        or torch_found.split("+")[0] != torch_version
        or cuda == "None"
    ):
        raise SystemExit(
            f"--python {python}: expected Python {GPU_PYTHON_VERSION} with a "
            f"CUDA build of torch {torch_version} (the GPU machine's), got "
            f"Python {version} with torch {torch_found} (CUDA {cuda})"
        )


def _cuda_home() -> str:
    """The CUDA toolkit folder for torch's extension builder: `CUDA_HOME`, or
    the folder above the `bin/` of `nvcc` when it holds the CUDA headers, or
    `/usr/local/cuda` (where `nvcc` on PATH is a wrapper script elsewhere)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit(
            "make gpu-mamba needs nvcc (the CUDA compiler) on PATH"
        )
    for home in (Path(nvcc).resolve().parents[1], Path("/usr/local/cuda")):
        if (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    raise SystemExit(
        f"make gpu-mamba: no cuda_runtime.h beside {nvcc} or in "
        "/usr/local/cuda; set CUDA_HOME to the CUDA toolkit's folder"
    )


def build_mamba(
    root: Path, python: str | None, torch_version: str = GPU_TORCH
) -> int:
    """Build mamba-ssm's wheel, CUDA extension included, for the GPU machine
    into `.gpu-wheels/`, where `make gpu-run` installs it.

    Needs `nvcc` (CUDA 13, as the GPU machine's torch) and a Python
    GPU_PYTHON_VERSION with a CUDA build of torch `torch_version`: `python`, or
    else a virtual environment made in `.gpu-build/venv-torch-<version>` with
    `python3.12` (several GB of downloads from PyPI, once). The extension is
    built for sm_90 alone (`mamba_setup_for_one_arch`), with mamba-ssm's own
    compiler flags otherwise. The wheel imports only beside that torch; on the
    GPU machine the benchmarks then compare against mamba_ssm's CUDA selective
    scan and its Triton SSD and state update, and where the import fails they
    run without them, as they do without the wheel.
    """
    cuda_home = _cuda_home()
    build = Path(root).resolve() / BUILD
    target = Path(root).resolve() / WHEELS
    target.mkdir(exist_ok=True)
    if python is None:
        venv = build / f"venv-torch-{torch_version}"
        python = str(venv / "bin" / "python")
        if not Path(python).exists():
            base = shutil.which(f"python{GPU_PYTHON_VERSION}")
            runs = base is not None and (
                subprocess.run(
                    [base, "--version"], capture_output=True, check=False
                ).returncode
                == 0
            )
            if not runs:  # missing, or a version manager's shim that fails
                raise SystemExit(
                    f"make gpu-mamba needs python{GPU_PYTHON_VERSION} on PATH "
                    "(or MAMBA_PYTHON=path/to/python with torch "
                    f"{torch_version})"
                )
            subprocess.run([base, "-m", "venv", str(venv)], check=True)
        # (again after an install that was cut short)
        probe = [python, "-c", "import torch"]
        if subprocess.run(probe, capture_output=True, check=False).returncode:
            subprocess.run(
                [
                    python,
                    "-m",
                    "pip",
                    "install",
                    f"torch=={torch_version}",
                    "numpy",
                    "setuptools",
                    "wheel",
                    "packaging",
                    "ninja",
                ],
                check=True,
            )
    _check_build_python(python, torch_version)
    sources = build / "src"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "--dest",
            str(sources),
            MAMBA_SSM,
        ],
        check=True,
    )
    (archive,) = sources.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(sources, filter="data")
    (setup,) = sources.glob("*/setup.py")
    setup.write_text(mamba_setup_for_one_arch(setup.read_text()))
    for old in target.glob("mamba_ssm-*.whl"):
        old.unlink()
    env = dict(
        os.environ,
        CUDA_HOME=cuda_home,
        MAMBA_FORCE_BUILD="TRUE",
        TORCH_CUDA_ARCH_LIST=GPU_ARCH,
        MAX_JOBS=str(os.cpu_count() or 1),
    )
    started = time.monotonic()
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(target),
            str(setup.parent),
        ],
        env=env,
        check=True,
    )
    (wheel,) = target.glob("mamba_ssm-*.whl")
    # the extension must load beside this torch (a GPU is not needed for that)
    check = Path(tempfile.mkdtemp(prefix="gpu-mamba-"))
    try:
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--quiet",
                "--target",
                str(check),
                str(wheel),
            ],
            check=True,
        )
        subprocess.run(
            [python, "-c", "import torch, selective_scan_cuda"],
            env=dict(os.environ, PYTHONPATH=str(check)),
            check=True,
        )
    finally:
        shutil.rmtree(check, ignore_errors=True)
    arch = GPU_ARCH.replace(".", "")
    print(
        f"{wheel}: {wheel.stat().st_size / 2**20:.1f} MiB, built in "
        f"{time.monotonic() - started:.0f} s for sm_{arch} against torch "
        f"{torch_version} (the tree that travels may carry 64 MiB in all)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m snippets._build.gpu",
        description="The GPU run and its archive of outputs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # every command takes --root
    rooted = argparse.ArgumentParser(add_help=False)
    rooted.add_argument(
        "--root", type=Path, default=REPOSITORY, help="the repository root"
    )
    go = commands.add_parser(
        "run",
        parents=[rooted],
        help="run everything that needs a GPU, within a budget",
    )
    go.add_argument(
        "--out", type=Path, required=True, help="the folder for what comes back"
    )
    go.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help=f"seconds for the whole run (default {DEFAULT_BUDGET})",
    )
    go.add_argument(
        "--only", metavar="PATTERN", help="only the cuda snippets matching this"
    )
    go.add_argument(
        "--tests",
        nargs="+",
        metavar="PATH",
        help=f"the test paths of the last step (default {CUDA_TESTS})",
    )
    go.add_argument(
        "--smoke",
        default=SMOKE_TESTS,
        help=f"the smoke tests (default {SMOKE_TESTS})",
    )
    back = commands.add_parser(
        "unpack",
        parents=[rooted],
        help="put a GPU run's outputs into docs/generated/",
    )
    back.add_argument("archive", type=Path)
    back.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the generated folder (default ROOT/docs/generated)",
    )
    back.add_argument(
        "--accept-cpu",
        action="store_true",
        help="also take CPU outputs of `# requires: cuda` snippets (dry runs)",
    )
    commands.add_parser(
        "bundle",
        parents=[rooted],
        help="record the commit for a tree without .git",
    )
    commands.add_parser(
        "wheels", parents=[rooted], help="download the optional baseline wheels"
    )
    mamba = commands.add_parser(
        "mamba",
        parents=[rooted],
        help="build mamba-ssm's wheel with its CUDA extension",
    )
    mamba.add_argument(
        "--python",
        default=None,
        help=f"a Python {GPU_PYTHON_VERSION} with a CUDA build of the torch "
        f"of --torch (default: a venv made in {BUILD}/venv-torch-<version>)",
    )
    mamba.add_argument(
        "--torch",
        default=GPU_TORCH,
        help="the GPU machine's torch version, which the extension is built "
        f"against (default {GPU_TORCH})",
    )
    args = parser.parse_args(argv)
    if args.command == "mamba":
        return build_mamba(args.root, args.python, args.torch)
    if args.command == "run":
        if args.budget <= 0:
            parser.error(
                "--budget must be a positive number of seconds, got "
                f"{args.budget}"
            )
        return run(
            args.root, args.out, args.budget, args.only, args.tests, args.smoke
        )
    if args.command == "unpack":
        generated = args.out or args.root / "docs" / "generated"
        return unpack(args.archive, args.root, generated, args.accept_cpu)
    if args.command == "bundle":
        return bundle(args.root)
    return wheels(args.root)


if __name__ == "__main__":
    sys.exit(main())
