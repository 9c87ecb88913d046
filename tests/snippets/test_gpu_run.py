"""The GPU run (`make gpu-run`, `make gpu-unpack`, `make gpu-bundle`) as a dry run without CUDA.

Most tests use a throwaway repository whose smoke passes for one op and fails for another, so
that the order of the steps, the skipping of a benchmark whose op failed, the time caps, the
archive and its unpacking are checked in seconds. One test runs the real command on this
repository with a small budget and a single snippet, as CI does.
"""

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from snippets._build import build as _build
from snippets._build import gpu

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH = '''"""A benchmark."""
# requires: cuda
# %%
import kernels.ops
open("{name}.txt", "w").write("measured {name}\\n")
print("benchmark {name}")
'''
CPU = """# %%
open("cpu.txt", "w").write("cpu\\n")
"""
SMOKE = """import json, os
import pytest

CASES = {cases!r}
LOG = os.environ.get("GPU_SMOKE_LOG")


def log(record):
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(record) + "\\n")


log({{"expected": CASES}})


@pytest.mark.smoke
@pytest.mark.parametrize("case", CASES)
def test_smoke(case):
    ok = not case.startswith("ssd-")
    log({{"case": case, "outcome": "passed" if ok else "failed"}})
    assert ok, "ssd is broken"
"""
OTHER = "def test_other():\n    assert 1 + 1 == 2\n"


def make_repo(root: Path, snippets: dict) -> Path:
    """A repository with kernels/ops.py, the snippets, the environment probe and a smoke."""
    smoke = SMOKE.format(
        cases=["flash_attention-1", "selective_scan-1", "ssd-1", "ssd-2"]
    )
    files = {
        "kernels/__init__.py": "",
        "kernels/ops.py": "X = 1\n",
        "tests/smoke.py": smoke,
        "tests/test_other.py": OTHER,
        "pytest.ini": "[pytest]\nmarkers =\n    smoke: the op smoke\n",
        **snippets,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "tests/gpu_environment.py").write_text(
        (REPOSITORY / "tests/gpu_environment.py").read_text()
    )
    return root


def dry_run(repo: Path, out: Path, budget: float = 120, **options) -> int:
    """`gpu.run` on `repo` with its own smoke and tests."""
    return gpu.run(
        repo,
        out,
        budget,
        smoke="tests/smoke.py",
        tests=["tests/test_other.py"],
        **options,
    )


def steps(out: Path) -> list[list[str]]:
    """The rows of steps.txt (header excluded)."""
    return [
        line.split("\t")
        for line in (out / "steps.txt").read_text().splitlines()[1:]
    ]


def archive_names(out: Path) -> list[str]:
    with tarfile.open(out / "outputs.tar.gz") as tar:
        return sorted(tar.getnames())


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A repository with three snippets, after one dry run: (repo, out, exit status)."""
    repo = make_repo(
        tmp_path_factory.mktemp("repo"),
        {
            "snippets/ssd/01_bench.py": BENCH.format(name="ssd"),
            "snippets/flash_attention/01_bench.py": BENCH.format(name="flash"),
            "snippets/demo/01_cpu.py": CPU,
        },
    )
    ops = repo / "kernels/ops.py"
    (repo / "gpu-bundle.json").write_text(
        json.dumps(
            {
                "commit": "c0ffee" * 6 + "abcd",
                "dirty": False,
                "files": {
                    "kernels/ops.py": hashlib.sha256(
                        ops.read_bytes()
                    ).hexdigest()
                },
            }
        )
    )
    out = tmp_path_factory.mktemp("out")
    return repo, out, dry_run(repo, out)


def test_dry_run_returns_the_archive_steps_log_and_environment(ran):
    repo, out, code = ran
    assert code == 1  # the smoke failed for ssd
    assert sorted(p.name for p in out.iterdir()) == [
        "environment.json",
        "outputs.tar.gz",
        "run.log",
        "smoke.json",
        "steps.txt",
    ]
    assert [row[:2] for row in steps(out)] == [
        ["environment", "0"],
        ["smoke", "1"],
        ["snippet flash_attention/01_bench", "0"],
        ["snippet ssd/01_bench", "skipped: smoke ssd failed"],
        ["tests", "0"],
    ]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["gpu"] is False and environment["copy_gb_per_s"] > 0
    assert environment["matmul_tflops"] > 0
    log = (out / "run.log").read_text()
    assert "DRY RUN without CUDA" in log and "=== summary ===" in log
    assert "smoke FAILED for: ssd (their benchmarks are skipped)" in log


def test_smoke_json_names_the_failing_op(ran):
    smoke = json.loads((ran[1] / "smoke.json").read_text())
    assert smoke["status"] == "1"
    assert smoke["ops"] == {
        "flash_attention": {
            "expected": 1,
            "passed": 1,
            "failed": [],
            "verdict": "passed",
        },
        "selective_scan": {
            "expected": 1,
            "passed": 1,
            "failed": [],
            "verdict": "passed",
        },
        "ssd": {
            "expected": 2,
            "passed": 0,
            "failed": ["ssd-1", "ssd-2"],
            "verdict": "failed",
        },
    }


def test_an_op_whose_smoke_did_not_finish_is_not_trusted(tmp_path):
    log = tmp_path / "smoke.jsonl"
    log.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"expected": ["a-1", "a-2", "b-1", "b-2", "c-1"]},
                {"case": "a-1", "outcome": "passed"},
                {"case": "b-1", "outcome": "passed"},
                {"case": "a-2", "outcome": "passed"},
                {"case": "c-1", "outcome": "failed"},
            ]
        )
        + '\n{"case": "b-2", "outc'
    )  # cut short by the kill
    verdicts = gpu.smoke_verdicts(log)
    assert {op: v["verdict"] for op, v in verdicts.items()} == {
        "a": "passed",
        "b": "incomplete",
        "c": "failed",
    }
    assert gpu.smoke_verdicts(tmp_path / "none.jsonl") == {}


def test_archive_holds_the_new_outputs_only_and_the_tree_is_untouched(ran):
    repo, out, _ = ran
    assert archive_names(out) == [
        f"generated/flash_attention/01_bench/{name}"
        for name in ("cells.json", "flash.txt", "meta.json", "stdout.txt")
    ]
    assert not (repo / "docs").exists()  # the dry run wrote into a scratch copy
    with tarfile.open(out / "outputs.tar.gz") as tar:
        meta = json.load(
            tar.extractfile("generated/flash_attention/01_bench/meta.json")
        )
    assert meta["gpu"] is False and meta["modules"].keys() == {
        "kernels/__init__.py",
        "kernels/ops.py",
    }
    assert (meta["commit"], meta["dirty"]) == (
        "c0ffee" * 6 + "abcd",
        False,
    )  # from the bundle


def test_unpack_takes_matching_outputs_and_refuses_the_others(
    ran, tmp_path, capsys
):
    repo, out, _ = ran
    copy = Path(shutil.copytree(repo, tmp_path / "repo"))
    archive = out / "outputs.tar.gz"
    generated = copy / "docs/generated"
    assert gpu.unpack(archive, copy, generated) == 1
    assert (
        "REFUSED flash_attention/01_bench: a CPU output of a `# requires: cuda` snippet"
        in capsys.readouterr().out
    )
    assert gpu.unpack(archive, copy, generated, accept_cpu=True) == 0
    assert (
        generated / "flash_attention/01_bench/flash.txt"
    ).read_text() == "measured flash\n"
    assert (generated / "flash_attention/flash_attention.ipynb").is_file()
    assert "unpacked flash_attention/01_bench (CPU (" in capsys.readouterr().out
    (copy / "kernels/ops.py").write_text("X = 2\n")
    assert gpu.unpack(archive, copy, generated, accept_cpu=True) == 1
    assert (
        "REFUSED flash_attention/01_bench: kernels/ops.py changed since the run"
        in capsys.readouterr().out
    )


def tampered(archive: Path, dest: Path, name: str, data: bytes) -> Path:
    """A copy of `archive` with member `name` replaced by `data`."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w:gz") as tar:
        for member in src.getmembers():
            content = (
                data if member.name == name else src.extractfile(member).read()
            )
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return dest


def test_unpack_refuses_a_tampered_archive(ran, tmp_path, capsys):
    repo, out, _ = ran
    copy = Path(shutil.copytree(repo, tmp_path / "repo"))
    bad = tampered(
        out / "outputs.tar.gz",
        tmp_path / "bad.tar.gz",
        "generated/flash_attention/01_bench/flash.txt",
        b"measured 1000x faster\n",
    )
    assert gpu.unpack(bad, copy, copy / "docs/generated", accept_cpu=True) == 1
    assert (
        "REFUSED flash_attention/01_bench: its files do not match its meta.json"
        in capsys.readouterr().out
    )
    assert not (copy / "docs/generated/flash_attention/01_bench").exists()
    escape = tmp_path / "escape.tar.gz"
    with tarfile.open(escape, "w:gz") as tar:
        info = tarfile.TarInfo("generated/../../outside.txt")
        tar.addfile(info, io.BytesIO(b""))
    assert gpu.unpack(escape, copy, copy / "docs/generated") == 2
    assert "not a file of an output folder" in capsys.readouterr().err


def test_a_snippet_past_its_cap_is_killed_and_the_run_goes_on(
    tmp_path, monkeypatch, capsys
):
    slow = BENCH.format(name="slow") + "import time\ntime.sleep(60)\n"
    repo = make_repo(
        tmp_path / "repo",
        {
            "snippets/flash_attention/01_bench.py": slow,
            "snippets/linear_attention/01_bench.py": BENCH.format(
                name="linear"
            ),
        },
    )
    old = repo / "docs/generated/flash_attention/01_bench"
    old.mkdir(parents=True)
    (old / "meta.json").write_text('{"gpu": false}\n')
    (repo / "tests/smoke.py").write_text(
        SMOKE.format(
            cases=[
                "flash_attention-1",
                "linear_attention-1",
                "linear_attention_step-1",
            ]
        )
    )
    monkeypatch.setattr(gpu, "FIRST_SNIPPET_CAP", 8)
    monkeypatch.setattr(gpu, "MIN_STEP", 1)
    out = tmp_path / "out"
    assert dry_run(repo, out) == 1
    rows = steps(out)
    assert rows[2][:2] == ["snippet flash_attention/01_bench", "timeout"]
    assert float(rows[2][2]) < 20
    assert rows[3][:2] == ["snippet linear_attention/01_bench", "0"]
    assert archive_names(out) == [
        f"generated/linear_attention/01_bench/{name}"
        for name in ("cells.json", "linear.txt", "meta.json", "stdout.txt")
    ]
    assert (
        old / "meta.json"
    ).read_text() == '{"gpu": false}\n'  # the real tree: untouched


def test_steps_out_of_budget_are_skipped(tmp_path):
    repo = make_repo(
        tmp_path / "repo",
        {"snippets/ssd/01_bench.py": BENCH.format(name="ssd")},
    )
    out = tmp_path / "out"
    assert dry_run(repo, out, budget=gpu.RESERVE + 5) == 0
    assert [row[1] for row in steps(out)] == [
        "skipped: out of budget",
        "skipped: out of budget",
        "skipped: no smoke verdict",
        "skipped: out of budget",
    ]
    assert archive_names(out) == []


def _wheel(folder: Path, name: str, tag: str, module: str) -> Path:
    """A minimal wheel `name-1.0-tag.whl` holding `module` as `name.py`."""
    import zipfile

    info = f"{name}-1.0.dist-info"
    path = folder / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", module)
        wheel.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
            f"Tag: {tag}\n",
        )
        wheel.writestr(
            f"{info}/RECORD",
            f"{name}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n",
        )
    return path


def test_a_wheel_that_does_not_install_leaves_the_others(tmp_path):
    """One step per wheel of .gpu-wheels/: a wheel for another Python fails its
    step, the run goes on, and the snippets import the wheels that installed."""
    bench = (
        BENCH.format(name="flash")
        + "import baseline\nprint('baseline', baseline.NAME)\n"
    )
    repo = make_repo(
        tmp_path / "repo", {"snippets/flash_attention/01_bench.py": bench}
    )
    # a smoke that passes, so that the exit status is the wheels' alone
    (repo / "tests/smoke.py").write_text(
        SMOKE.format(cases=["flash_attention-1"])
    )
    (repo / gpu.WHEELS).mkdir()
    _wheel(repo / gpu.WHEELS, "baseline", "py3-none-any", "NAME = 'ok'\n")
    _wheel(repo / gpu.WHEELS, "elsewhere", "cp27-cp27m-win32", "X = 1\n")
    out = tmp_path / "out"
    assert dry_run(repo, out) == 0
    rows = steps(out)
    assert rows[0][:2] == ["wheel baseline", "0"]
    assert rows[1][0] == "wheel elsewhere" and rows[1][1] not in ("0", "")
    assert ["snippet flash_attention/01_bench", "0"] in [
        row[:2] for row in rows
    ]
    assert "baseline ok" in (out / "run.log").read_text()


def test_bundle_records_the_commit_and_the_tree_without_git_reads_it(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = make_repo(tmp_path / "repo", {"snippets/demo/01_cpu.py": CPU})
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(
        git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert gpu.bundle(repo) == 0
    assert _build.git_state(repo, repo / "docs/generated") == (
        head,
        False,
    )  # bundle not dirt
    copy = Path(
        shutil.copytree(
            repo, tmp_path / "copy", ignore=shutil.ignore_patterns(".git")
        )
    )
    assert _build.git_state(copy, copy / "docs/generated") == (head, False)
    (copy / "kernels/ops.py").write_text("X = 3\n")
    assert _build.git_state(copy, copy / "docs/generated") == (head, True)
    (copy / "gpu-bundle.json").unlink()
    assert _build.git_state(copy, copy / "docs/generated") == (None, False)


def test_cuda_snippets_on_cpu_refuse_the_real_outputs_folder():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snippets",
            "--only",
            "flash_attention/03",
            "--cuda-snippets-on-cpu",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "give a scratch --out" in result.stderr


def test_make_gpu_run_dry_run_on_this_repository(tmp_path):
    """The real command, as CI runs it: environment, the real op smoke, one snippet."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    before = gpu._folder_hashes(REPOSITORY / "docs/generated")
    out = tmp_path / "out"
    command = [
        "make",
        "-s",
        "gpu-run",
        f"OUT={out}",
        "BUDGET=150",
        f"GPU_PYTHON={sys.executable}",
        "GPU_RUN_ARGS=--only flash_attention/03_benchmark "
        "--tests tests/kernels/test_gpu_smoke.py",
    ]
    result = subprocess.run(
        command,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the wheels of .gpu-wheels/, where there are any, each its own step that
    # may fail (a wheel built for the GPU machine's Python) without failing the
    # run
    wheels = sorted((REPOSITORY / gpu.WHEELS).glob("*.whl"))
    assert [row[0] for row in steps(out)[: len(wheels)]] == [
        f"wheel {wheel.name.split('-')[0]}" for wheel in wheels
    ]
    assert [row[:2] for row in steps(out)[len(wheels) :]] == [
        ["environment", "0"],
        ["smoke", "0"],
        ["snippet flash_attention/03_benchmark", "0"],
        ["tests", "0"],
    ]
    assert "generated/flash_attention/03_benchmark/meta.json" in archive_names(
        out
    )
    ops = json.loads((out / "smoke.json").read_text())["ops"]
    assert {op: facts["verdict"] for op, facts in ops.items()} == {
        op: "passed"
        for op in (
            "flash_attention",
            "linear_attention",
            "linear_attention_step",
            "selective_scan",
            "selective_scan_step",
            "ssd",
            "tree_attention",
        )
    }
    assert gpu._folder_hashes(REPOSITORY / "docs/generated") == before


# The lines of mamba-ssm's setup.py that `make gpu-mamba` edits, as in its
# release 2.3.2.post1.
MAMBA_SETUP = """\
cc_flag = []
if not HIP_BUILD:
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_75,code=sm_75")
    if bare_metal_version >= Version("11.8"):
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_90,code=sm_90")
extra = {"nvcc": ["-O3"] + cc_flag}
"""


def test_mamba_setup_loses_its_architecture_list_and_stays_python():
    patched = gpu.mamba_setup_for_one_arch(MAMBA_SETUP)
    assert "gencode" not in patched and "arch=compute_" not in patched
    namespace = {"HIP_BUILD": False, "bare_metal_version": 12, "Version": float}
    exec(compile(patched, "setup.py", "exec"), namespace)
    assert namespace["cc_flag"] == [] and namespace["extra"]["nvcc"] == ["-O3"]


@pytest.mark.parametrize(
    "text, found",
    [
        ("cc_flag = []\n", "found 0 such lines"),
        (
            MAMBA_SETUP
            + 'cc_flag += ["-gencode", "arch=compute_80,code=sm_80"]\n',
            "and others left over",
        ),
    ],
)
def test_mamba_setup_of_another_version_is_refused(text, found):
    with pytest.raises(ValueError, match=found) as error:
        gpu.mamba_setup_for_one_arch(text)
    assert gpu.MAMBA_SSM in str(error.value)


def test_mamba_build_says_what_it_needs(monkeypatch, tmp_path):
    """Without nvcc, and with a Python that is not the GPU machine's, the build
    stops before it downloads anything, saying what it expected."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="needs nvcc"):
        gpu.build_mamba(tmp_path, sys.executable)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(
        SystemExit, match="expected Python 3.12 with a CUDA"
    ) as e:
        gpu.build_mamba(tmp_path, sys.executable, torch_version="0.0.1")
    assert f"--python {sys.executable}" in str(e.value)
    assert not (tmp_path / gpu.BUILD).exists()
