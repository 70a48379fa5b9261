"""The sandbox: generated code runs in a limited child process, and every way it can go wrong is contained."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from lmforge.eval.sandbox import SandboxResult, run_code, run_many

posix_only = pytest.mark.skipif(os.name != "posix", reason="resource limits and process groups are POSIX")


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (a container's PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_passing_program():
    res = run_code("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n")
    assert isinstance(res, SandboxResult)
    assert (res.passed, res.status, res.returncode) == (True, "passed", 0)
    assert res.stdout == "ok\n"


def test_failing_assert():
    res = run_code("assert 1 + 1 == 3, 'arithmetic'\n")
    assert (res.passed, res.status) == (False, "failed")
    assert "AssertionError: arithmetic" in res.detail


def test_exit_code_decides_not_output():
    assert run_code("import sys\nprint('passed')\nsys.exit(1)\n").status == "failed"
    assert run_code("raise SystemExit(0)\n").status == "passed"


@posix_only
def test_infinite_loop_times_out():
    start = time.monotonic()
    res = run_code("while True:\n    pass\n", timeout=2)
    assert (res.passed, res.status) == (False, "timeout")
    assert time.monotonic() - start < 5


@posix_only
def test_huge_allocation_is_memory_not_a_crash():
    res = run_code("b = bytearray(4 * 1024**3)\n", memory_mb=256)
    assert (res.passed, res.status) == (False, "memory")
    assert "MemoryError" in res.detail


@posix_only
def test_forked_child_dies_with_its_group():
    program = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)'])\n"
        "print(child.pid, flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    start = time.monotonic()
    res = run_code(program, timeout=2)
    assert res.status == "timeout"
    assert time.monotonic() - start < 5
    child = int(res.stdout.split()[0])
    deadline = time.monotonic() + 2  # SIGKILL is asynchronous: give the kernel a moment
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child), f"the sandbox's child {child} outlived the timeout"


@posix_only
def test_child_left_behind_after_a_normal_exit_is_killed():
    program = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)'])\n"
        "print(child.pid, flush=True)\n"
    )
    res = run_code(program, timeout=5)
    assert res.status == "passed"
    child = int(res.stdout.split()[0])
    deadline = time.monotonic() + 2
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child)


@posix_only
def test_huge_file_is_stopped():
    program = (
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(1000):\n"
        "        f.write(b'x' * 1024 * 1024)\n"  # 1 GB, if nothing stopped it
    )
    start = time.monotonic()
    res = run_code(program, timeout=10)
    assert not res.passed
    assert res.status == "error"
    assert "file size limit" in res.detail
    assert time.monotonic() - start < 5


def test_parent_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("LMFORGE_SANDBOX_SECRET", "hunter2")
    res = run_code(
        "import os\n"
        "assert 'LMFORGE_SANDBOX_SECRET' not in os.environ, 'leaked'\n"
        "assert 'hunter2' not in repr(dict(os.environ)), 'leaked'\n"
    )
    assert res.status == "passed", res.detail


def test_runs_in_its_own_empty_directory():
    res = run_code("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\n")
    cwd, listing = res.stdout.splitlines()
    assert res.status == "passed"
    assert Path(cwd).resolve() != Path.cwd().resolve()
    assert listing == "['program.py']"
    assert not Path(cwd).exists()  # removed afterwards


def test_stdin_is_closed():
    assert run_code("import sys\nassert sys.stdin.read() == ''\n", timeout=5).status == "passed"


def test_run_many_keeps_order():
    programs = ["pass\n", "assert False\n", "raise ValueError('x')\n", "print(1)\n"]
    got = [r.status for r in run_many(programs, timeout=5, workers=2)]
    assert got == ["passed", "failed", "failed", "passed"]
    assert run_many([], timeout=5) == []


def test_syntax_error_is_a_failure():
    res = run_code("def f(:\n")
    assert res.status == "failed"
    assert "SyntaxError" in res.detail


def test_interpreter_is_ours():
    # the child runs the same Python (and so the same standard library) as the evaluator
    res = run_code("import sys\nprint(sys.version)\n")
    assert res.stdout.strip() == sys.version
