"""The ``python`` tool: run untrusted code in a separate, limited process.

Layers, outermost first:

* a separate process (``python -I -S -B``: isolated mode, no site-packages, no
  bytecode writes) in its own session, so a wall-clock timeout kills the whole
  process group;
* a fresh, empty temporary directory as working directory, ``HOME`` and
  ``TMPDIR``, removed afterwards;
* a minimal environment: nothing from ``os.environ`` (no API keys, no tokens);
* kernel resource limits set by the child before any user code runs:
  ``RLIMIT_CPU`` (soft, then SIGKILL one second later), ``RLIMIT_AS``
  (memory), ``RLIMIT_FSIZE`` (file size), ``RLIMIT_NOFILE`` and no core dumps;
* on Linux, when ``unshare -rn`` works here, a new user + network namespace:
  the child has no network interface but a down loopback, so even
  ``127.0.0.1`` is unreachable;
* inside the child, an audit hook installed before user code (it cannot be
  removed): network calls, process creation, ``ctypes``, garbage-collector
  introspection and file access outside the working directory (reads of the
  standard library excepted) raise ``PermissionError``. This layer is
  defence in depth, not a boundary on its own; the network namespace and the
  rlimits are enforced by the kernel.

Output is read up to a cap; a child that keeps printing past it is stopped.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from agency.tools.base import ToolArgs, ToolContext, ToolResult, clip

log = logging.getLogger(__name__)

__all__ = [
    "PythonSandbox",
    "PythonTool",
    "SandboxLimits",
    "SandboxResult",
    "network_namespace_available",
]

NETWORK_DISABLED = "network is disabled in the sandbox"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    memory_mb: int = 256
    wall_seconds: float = 10.0
    output_chars: int = 8000
    file_mb: int = 16  # the largest file the code may write
    open_files: int = 64
    max_concurrent: int = 4  # sandboxes running at once (per PythonTool)

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_mb", "wall_seconds", "output_chars", "file_mb", "open_files", "max_concurrent"):
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
    network_isolated: bool = False  # True when a network namespace was used

    @property
    def ok(self) -> bool:
        return self.reason is None


# ---------------------------------------------------------------------------
# the child's bootstrap (runs as ``python -c``, before any user code)

_BOOTSTRAP = r'''
import sys, os, resource, builtins, ast

def _apply_limits(cpu, mem, fsize, nofile):
    inf = resource.RLIM_INFINITY
    wanted = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for res, soft, hard in wanted:
        try:
            _, cur_hard = resource.getrlimit(res)
            if cur_hard != inf:
                hard = min(hard, cur_hard)
            resource.setrlimit(res, (min(soft, hard), hard))
        except (ValueError, OSError):
            pass  # not supported on this platform

def _install_guard(root):
    import posix, _stat
    PE = PermissionError
    OSE = OSError
    isinstance_ = isinstance
    str_, bytes_, int_ = str, bytes, int
    reversed_ = reversed
    fspath = posix.fspath
    lstat = posix.lstat
    readlink = posix.readlink
    getcwd = posix.getcwd
    islnk = _stat.S_ISLNK
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    real = os.path.realpath
    write_roots = (real(root),)
    read_roots = write_roots + tuple(real(p) for p in sys.path if p) + ("/usr/share/zoneinfo",)
    read_files = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/etc/localtime"})
    net = frozenset({
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "socket.getnameinfo", "socket.sethostname",
    })
    spawn = frozenset({
        "subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
        "os.fork", "os.forkpty", "pty.spawn", "os.startfile", "os.kill", "os.killpg",
        "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "sys.remote_exec",
    })
    introspection = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.setprofile", "sys.settrace", "sys.monitoring.register_callback"})
    blocked_imports = {
        "_posixsubprocess": "starting processes is disabled in the sandbox",
        "_ctypes": "ctypes is disabled in the sandbox",
    }
    read_events = frozenset({"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"})
    write_events = frozenset({
        "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
        "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
    })
    two_path_events = frozenset({"os.rename", "os.link"})

    def resolve(path):
        if path is None:
            return getcwd()
        if isinstance_(path, int_):
            return None  # an already-open descriptor was checked when it was opened
        if not isinstance_(path, (str_, bytes_)):
            path = fspath(path)
        if isinstance_(path, bytes_):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        todo = [c for c in path.split("/") if c]
        todo = list(reversed_(todo))
        cur = ""
        links = 0
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":
                cur = cur[: cur.rfind("/")] if "/" in cur else ""
                continue
            nxt = cur + "/" + part
            try:
                st = lstat(nxt)
            except OSE:
                cur = nxt
                continue
            if islnk(st.st_mode):
                links += 1
                if links > 40:
                    raise PE("too many symbolic links: " + path)
                target = readlink(nxt)
                if target.startswith("/"):
                    cur = ""
                todo.extend(reversed_([c for c in target.split("/") if c]))
            else:
                cur = nxt
        return cur or "/"

    def inside(path, roots):
        for r in roots:
            if path == r or path.startswith(r + "/"):
                return True
        return False

    def check(path, write):
        p = resolve(path)
        if p is None:
            return
        if write:
            if not inside(p, write_roots):
                raise PE("writing outside the sandbox directory is not allowed: " + p)
        elif not (p in read_files or inside(p, read_roots)):
            raise PE("reading outside the sandbox directory is not allowed: " + p)

    def hook(event, args):
        if event in net:
            raise PE("network is disabled in the sandbox")
        if event in spawn:
            raise PE("starting processes is disabled in the sandbox (" + event + ")")
        if event.startswith("ctypes."):
            raise PE("ctypes is disabled in the sandbox")
        if event in introspection:
            raise PE(event + " is disabled in the sandbox")
        if event == "import":
            msg = blocked_imports.get(args[0])
            if msg is not None:
                raise PE(msg)
            return
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            write = False
            if isinstance_(mode, str_):
                for ch in "wax+":
                    if ch in mode:
                        write = True
            if isinstance_(flags, int_) and flags & write_flags:
                write = True
            check(path, write)
        elif event in read_events:
            check(args[0] if args else None, False)
        elif event in write_events:
            check(args[0], True)
        elif event == "os.chdir":
            p = resolve(args[0])
            if p is not None and not inside(p, write_roots):
                raise PE("leaving the sandbox directory is not allowed: " + p)
        elif event in two_path_events:
            check(args[0], True)
            check(args[1], True)
        elif event == "os.symlink":
            raise PE("symbolic links are disabled in the sandbox")

    sys.addaudithook(hook)

def _main():
    cpu, mem, fsize, nofile, guard = (int(x) for x in sys.argv[2:7])
    _apply_limits(cpu, mem, fsize, nofile)
    src = sys.stdin.read()
    sys.argv = ["<sandbox>"]
    import linecache, traceback
    linecache.cache["<sandbox>"] = (len(src), None, src.splitlines(True), "<sandbox>")
    if guard:
        _install_guard(os.getcwd())
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
        # show the user's frames, not this runtime's (the guard's frames included)
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

# ---------------------------------------------------------------------------
# network namespace detection (once per process)

_netns: bool | None = None


async def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` works here (Linux with unprivileged user namespaces)."""
    global _netns
    if _netns is not None:
        return _netns
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        _netns = False
        log.info("sandbox: no unshare here; network is blocked in-process only")
        return _netns
    try:
        proc = await asyncio.create_subprocess_exec(
            "unshare", "-rn", "--", sys.executable, "-I", "-S", "-c", "pass",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        ok = proc.returncode == 0
    except (OSError, asyncio.TimeoutError) as exc:
        ok, err = False, str(exc).encode()
    if not ok:
        log.warning("sandbox: 'unshare -rn' does not work here (%s); network is blocked in-process only",
                    err.decode(errors="replace").strip()[:200])
    else:
        log.info("sandbox: python runs in its own network namespace (unshare -rn)")
    _netns = ok
    return ok


def _minimal_env(workdir: str) -> dict[str, str]:
    # nothing from os.environ: no API keys, no tokens, no proxies
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
    }


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


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


_NET_SYMPTOMS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known",
                 "Cannot assign requested address", "No address associated with hostname")


class PythonSandbox:
    """Runs Python source in a fresh, limited child process."""

    def __init__(self, limits: SandboxLimits | None = None, *, use_netns: bool = True, guard: bool = True) -> None:
        self.limits = limits or SandboxLimits()
        self.use_netns = use_netns
        self.guard = guard  # the in-process audit hook; only tests turn it off

    async def run(self, code: str) -> SandboxResult:
        lim = self.limits
        netns = await network_namespace_available() if self.use_netns else False
        start = time.monotonic()
        cap = lim.output_chars * 4 + 1024  # bytes per stream; UTF-8 is at most 4 bytes a character
        with tempfile.TemporaryDirectory(prefix="ateams-py-", ignore_cleanup_errors=True) as workdir:
            argv = [
                sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _LAUNCH, _BOOTSTRAP,
                str(lim.cpu_seconds), str(lim.memory_mb * 1024 * 1024), str(lim.file_mb * 1024 * 1024),
                str(lim.open_files), "1" if self.guard else "0",
            ]
            if netns:
                argv = ["unshare", "-rn", "--", *argv]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=workdir,
                    env=_minimal_env(workdir),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                log.error("sandbox: could not start the interpreter: %s", exc)
                return SandboxResult("", "", None, f"could not start the sandbox: {exc}", 0)

            out, err = _Capped(cap), _Capped(cap)
            flooded = False

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
                        _kill_group(proc)

            tasks = [
                asyncio.create_task(feed()),
                asyncio.create_task(pump(proc.stdout, out)),
                asyncio.create_task(pump(proc.stderr, err)),
            ]
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), timeout=lim.wall_seconds)
            except asyncio.TimeoutError:
                timed_out = True
                _kill_group(proc)
                await proc.wait()
            except BaseException:  # cancelled: do not leave a child behind
                _kill_group(proc)
                for t in tasks:
                    t.cancel()
                raise
            # the pipes close once the process is gone; give the readers a moment to finish
            done, pending = await asyncio.wait(tasks, timeout=2)
            for t in pending:
                t.cancel()
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.warning("sandbox: stream task failed: %r", t.exception())
            duration_ms = int((time.monotonic() - start) * 1000)

        stdout, stderr = out.text(), err.text()
        code_ = proc.returncode
        reason = self._reason(code_, stderr, timed_out=timed_out, flooded=flooded,
                              elapsed=duration_ms / 1000, netns=netns)
        return SandboxResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=code_,
            reason=reason,
            duration_ms=duration_ms,
            truncated=out.overflow or err.overflow,
            network_isolated=netns,
        )

    def _reason(self, code: int | None, stderr: str, *, timed_out: bool, flooded: bool,
                elapsed: float, netns: bool) -> str | None:
        lim = self.limits
        if timed_out:
            return f"time limit ({lim.wall_seconds:g} s) exceeded; the process was stopped"
        if flooded:
            return f"output limit ({lim.output_chars} characters) exceeded; the process was stopped"
        if code == 0:
            return None
        last = _last_line(stderr)
        if code is not None and code < 0:
            sig = -code
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
        if "MemoryError" in last or "Cannot allocate memory" in last:
            return f"memory limit ({lim.memory_mb} MB) exceeded"
        if NETWORK_DISABLED in last or (netns and any(s in last for s in _NET_SYMPTOMS)):
            return NETWORK_DISABLED
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
        lim = self.limits
        self.description = (
            "Run Python 3 code (standard library only) in a sandbox: an empty temporary directory, "
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
        log.info("python tool: member=%s agency=%s exit=%s reason=%s ms=%d",
                 ctx.member, ctx.agency_id, res.exit_code, res.reason, res.duration_ms)
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
