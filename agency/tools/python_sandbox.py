"""The ``python`` tool: run untrusted code in an isolated, limited process tree.

The boundary is the kernel's, not Python's (see :mod:`agency.tools.isolation`):

* ``bwrap`` runs the interpreter in fresh user, mount, PID, network, IPC and
  UTS namespaces, with an empty environment, in its own session, killed with
  its parent; it sees only a read-only Python runtime, its own ``/proc`` and
  ``/dev``, and ``/scratch``, an empty size-limited tmpfs (working directory,
  ``HOME`` and ``TMPDIR``) that disappears with the run. Never the repository,
  the data folder, the database, the home directory, the host's ``/proc`` or
  a secret; no network but its own loopback. Its processes never run as the
  host's root.
* Before any user code, the interpreter's first lines set hard resource limits
  (they cannot be raised again): ``RLIMIT_CPU`` (soft, then SIGKILL one second
  later), ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE`` (file size),
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (processes and threads, counted inside
  the sandbox's own user namespace) and no core dumps.
* At the wall-clock limit, an output flood or a cancellation, the namespace's
  init is killed: the kernel then kills every process of the sandbox, so
  nothing outlives the run. A normal exit ends them the same way.

Where that isolation does not work (probed once per process), the tool is not
offered to models (:func:`agency.tools.registry.build_registry` leaves it out)
and :meth:`PythonSandbox.run` refuses with :class:`SandboxUnavailable`; there
is no weaker mode.

Output is read up to a cap; a child that keeps printing past it is stopped.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from agency.tools.base import ToolArgs, ToolContext, ToolError, ToolResult, clip
from agency.tools.isolation import (
    HOW_TO_ENABLE,
    SCRATCH,
    cached_status,
    isolation_status,
    kill_sandbox,
    parse_info,
    python_runtime,
    sandbox_argv,
)

log = logging.getLogger(__name__)

__all__ = [
    "PythonSandbox",
    "PythonTool",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "sandbox_available",
]

NETWORK_DISABLED = "network is disabled in the sandbox"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    memory_mb: int = 256  # address space of each process
    wall_seconds: float = 10.0
    output_chars: int = 8000
    file_mb: int = 16  # the largest file the code may write
    open_files: int = 64
    processes: int = 8  # processes and threads at once, the interpreter included
    scratch_mb: int = 64  # all files in /scratch together (a tmpfs: memory, not disk)
    max_concurrent: int = 4  # sandboxes running at once (per PythonTool)

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_mb", "wall_seconds", "output_chars", "file_mb", "open_files",
                     "processes", "scratch_mb", "max_concurrent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be positive")


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    reason: str | None  # None when the code ran to a clean exit; otherwise why it did not
    duration_ms: int
    truncated: bool = False
    isolation: str = ""  # what the code ran under (IsolationStatus.name)

    @property
    def ok(self) -> bool:
        return self.reason is None


class SandboxUnavailable(ToolError):
    """No real isolation here: sandboxed code is refused, never run weaker."""


def sandbox_available() -> bool:
    """Whether the isolation works here (probed once per process; see :func:`isolation_status`)."""
    return isolation_status().available


# ---------------------------------------------------------------------------
# the interpreter's first lines inside the sandbox (``python -c``), before any user code

_BOOTSTRAP = r'''
import sys, os, resource, builtins, ast

def _apply_limits(cpu, mem, fsize, nofile, nproc):
    wanted = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for res, soft, hard in wanted:
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        resource.setrlimit(res, (min(soft, hard), hard))  # a failure stops the run: no limits, no code

def _main():
    cpu, mem, fsize, nofile, nproc = (int(x) for x in sys.argv[2:7])
    _apply_limits(cpu, mem, fsize, nofile, nproc)
    src = sys.stdin.read()
    sys.argv = ["<sandbox>"]
    import linecache, traceback
    linecache.cache["<sandbox>"] = (len(src), None, src.splitlines(True), "<sandbox>")
    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        tree = ast.parse(src, "<sandbox>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<sandbox>", "exec"), g)
        if last is not None:
            value = eval(compile(last, "<sandbox>", "eval"), g)
            if value is not None:
                print(repr(value))
    except SystemExit:
        raise
    except MemoryError:
        g = tree = last = None
        sys.stderr.write("MemoryError: the memory limit was exceeded\n")
        sys.exit(1)
    except BaseException as exc:
        # show the user's frames, not this runtime's
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        todo, seen = [te], set()
        while todo:
            t = todo.pop()
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            t.stack[:] = [f for f in t.stack if f.filename != "<sandbox-runtime>"]
            todo.extend([t.__cause__, t.__context__, *(getattr(t, "exceptions", None) or [])])
        sys.stderr.write("".join(te.format()))
        sys.exit(1)

_main()
'''

_LAUNCH = "import sys; exec(compile(sys.argv[1], '<sandbox-runtime>', 'exec'))"

_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": SCRATCH, "TMPDIR": SCRATCH}


class _Capped:
    """Collects bytes up to a cap; remembers whether more arrived."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.overflow = False

    def add(self, chunk: bytes) -> bool:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.data += chunk[: max(room, 0)]
            self.overflow = True
            return False
        self.data += chunk
        return True

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


_NET_SYMPTOMS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known",
                 "Cannot assign requested address", "No address associated with hostname", "Connection refused")


class PythonSandbox:
    """Runs Python source in a fresh, isolated, limited process tree."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()

    async def run(self, code: str) -> SandboxResult:
        status = cached_status()
        if status is None:  # the probe runs once per process, in a thread: it starts a process and waits
            status = await asyncio.to_thread(isolation_status)
        if not status.available:
            raise SandboxUnavailable(
                f"the python tool is not available here: {status.reason}. To enable it: {HOW_TO_ENABLE}")
        bwrap = shutil.which("bwrap")
        if bwrap is None:  # uninstalled since the probe
            raise SandboxUnavailable("the python tool is not available here: bubblewrap (bwrap) is missing")
        lim = self.limits
        rt = python_runtime()
        start = time.monotonic()
        cap = lim.output_chars * 4 + 1024  # bytes per stream; UTF-8 is at most 4 bytes a character
        command = [
            rt.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _LAUNCH, _BOOTSTRAP,
            str(lim.cpu_seconds), str(lim.memory_mb * 1024 * 1024), str(lim.file_mb * 1024 * 1024),
            str(lim.open_files), str(lim.processes),
        ]
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        real_bwrap = os.path.realpath(bwrap)  # noqa: ASYNC240 -- a few lstat/readlink calls on a local path, once per run
        argv = sandbox_argv(real_bwrap, rt, command, scratch_bytes=lim.scratch_mb * 1024 * 1024,
                            info_fd=info_w, env=_ENV)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
                env={},  # nothing of ours: bwrap's own memory (its /proc/N/environ) holds no secret either
                start_new_session=True,
                pass_fds=(info_w,),
            )
        except OSError as exc:
            os.close(info_r)
            log.error("sandbox: could not start bwrap: %s", exc)
            return SandboxResult("", "", None, f"could not start the sandbox: {exc}", 0, isolation=status.name)
        finally:
            os.close(info_w)

        out, err = _Capped(cap), _Capped(cap)
        flooded = False
        init_pid: int | None = None

        def kill() -> None:
            kill_sandbox(init_pid, proc.pid)

        async def read_info() -> None:
            # bwrap writes {"child-pid": N} once the namespaces exist; the write end
            # may stay open in bwrap, so stop at the first complete document
            nonlocal init_pid
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                        os.fdopen(info_r, "rb", buffering=0))
            try:
                data = b""
                while init_pid is None:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    data += chunk
                    init_pid = parse_info(data)
            finally:
                transport.close()

        async def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(code.encode("utf-8", errors="surrogateescape"))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()

        async def pump(stream: asyncio.StreamReader | None, buf: _Capped) -> None:
            nonlocal flooded
            assert stream is not None
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                if not buf.add(chunk) and not flooded:
                    flooded = True
                    kill()

        info_task = asyncio.create_task(read_info())
        tasks = [
            asyncio.create_task(feed()),
            asyncio.create_task(pump(proc.stdout, out)),
            asyncio.create_task(pump(proc.stderr, err)),
        ]
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=lim.wall_seconds)
        except TimeoutError:
            timed_out = True
            if not info_task.done():  # still setting up: give bwrap a moment to name its init
                await asyncio.wait([info_task], timeout=1)
            kill()
            # bwrap reaps the init only after the kernel has ended every process of its namespace
            try:
                await asyncio.wait_for(proc.wait(), timeout=5)
            except TimeoutError:
                kill_sandbox(None, proc.pid)
                await proc.wait()
        except BaseException:  # cancelled: leave nothing behind
            kill()
            kill_sandbox(None, proc.pid)
            for t in (*tasks, info_task):
                t.cancel()
            raise
        # the pipes close once the tree is gone; give the readers a moment to finish
        done, pending = await asyncio.wait([*tasks, info_task], timeout=2)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.warning("sandbox: stream task failed: %r", t.exception())
        duration_ms = int((time.monotonic() - start) * 1000)

        stdout, stderr = out.text(), err.text()
        code_ = proc.returncode
        reason = self._reason(code_, stderr, timed_out=timed_out, flooded=flooded, elapsed=duration_ms / 1000)
        return SandboxResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=code_,
            reason=reason,
            duration_ms=duration_ms,
            truncated=out.overflow or err.overflow,
            isolation=status.name,
        )

    def _reason(self, code: int | None, stderr: str, *, timed_out: bool, flooded: bool,
                elapsed: float) -> str | None:
        lim = self.limits
        if timed_out:
            return f"time limit ({lim.wall_seconds:g} s) exceeded; the process was stopped"
        if flooded:
            return f"output limit ({lim.output_chars} characters) exceeded; the process was stopped"
        if code == 0:
            return None
        last = _last_line(stderr)
        sig = None
        if code is not None and code < 0:
            sig = -code
        elif code is not None and 128 < code < 128 + 65:
            sig = code - 128  # bwrap reports a child killed by signal N as 128 + N
        if sig is not None:
            if sig == signal.SIGXCPU:
                return f"CPU limit ({lim.cpu_seconds} s) exceeded; the process was stopped"
            if sig == signal.SIGKILL:
                # the CPU hard limit (soft + 1 s) or the kernel's OOM killer
                if elapsed >= lim.cpu_seconds:
                    return f"CPU limit ({lim.cpu_seconds} s) exceeded; the process was killed"
                return f"memory limit ({lim.memory_mb} MB) exceeded; the process was killed"
            if sig == signal.SIGXFSZ:
                return f"file size limit ({lim.file_mb} MB) exceeded"
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"the process was killed by {name}"
        if "File too large" in last:
            return f"file size limit ({lim.file_mb} MB) exceeded"
        if "No space left on device" in last:
            return f"scratch space limit ({lim.scratch_mb} MB) exceeded"
        if "MemoryError" in last or "Cannot allocate memory" in last:
            return f"memory limit ({lim.memory_mb} MB) exceeded"
        if "can't start new thread" in last or ("Resource temporarily unavailable" in last and "fork" in stderr):
            return f"process limit ({lim.processes} processes and threads) reached"
        if any(s in last for s in _NET_SYMPTOMS):
            return NETWORK_DISABLED
        if last.startswith("bwrap:"):
            return f"could not start the sandbox: {last}"
        if last.startswith("SystemExit") or not last:
            return f"exited with status {code}"
        return last


class PythonArgs(ToolArgs):
    code: str = Field(min_length=1, max_length=50_000,
                      description="Python 3 source; print() what you want to see")


class PythonTool:
    """Runs Python code in :class:`PythonSandbox`."""

    name = "python"
    Args: ClassVar[type[PythonArgs]] = PythonArgs
    roles: frozenset[str] = frozenset({"specialist", "collaborator"})

    def __init__(self, limits: SandboxLimits | None = None, *, sandbox: PythonSandbox | None = None) -> None:
        self.sandbox = sandbox or PythonSandbox(limits)
        self.limits = self.sandbox.limits
        self._slots: asyncio.Semaphore | None = None
        self.isolation = ""  # what the last run ran under
        lim = self.limits
        self.description = (
            "Run Python 3 code (standard library only) in an isolated sandbox: an empty scratch directory, "
            f"no network, no files outside it; limits {lim.cpu_seconds} s CPU, {lim.memory_mb} MB memory, "
            f"{lim.wall_seconds:g} s wall time, {lim.output_chars} characters of output. "
            "print() what you need; the value of a final expression is printed too. "
            "Nothing persists between calls."
        )

    async def run(self, args: PythonArgs, ctx: ToolContext) -> ToolResult:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        async with self._slots:
            res = await self.sandbox.run(args.code)
        self.isolation = res.isolation
        log.info("python tool: member=%s agency=%s exit=%s reason=%s ms=%d isolation=%s",
                 ctx.member, ctx.agency_id, res.exit_code, res.reason, res.duration_ms, res.isolation)
        parts = []
        if res.stdout:
            parts.append(res.stdout.rstrip("\n"))
        if res.stderr.strip():
            parts.append("[stderr]\n" + res.stderr.rstrip("\n"))
        output, cut = clip("\n".join(parts), self.limits.output_chars)
        return ToolResult(
            tool=self.name,
            ok=res.ok,
            output=output,
            error=res.reason,
            duration_ms=res.duration_ms,
            truncated=cut or res.truncated,
        )
