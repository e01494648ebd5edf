"""Kernel isolation for tools that run code: bubblewrap (``bwrap``) namespaces.

A sandboxed command runs in fresh user, mount, PID, network, IPC, UTS and
cgroup namespaces (``bwrap --unshare-all --unshare-user --disable-userns``),
with an empty environment, in its own session, killed with its parent. Its
file system is built from nothing:

* the Python runtime, read-only: the interpreter, the standard library (its
  ``site-packages`` covered by an empty read-only directory), ``libpython``
  when the interpreter is built shared, the system's shared libraries
  (``/usr/lib`` and the ``/lib*`` links), ``/etc/ld.so.cache`` and
  ``/usr/share/zoneinfo``;
* a fresh ``/proc`` of its own PID namespace and a minimal ``/dev``
  (both read-only apart from the device nodes);
* ``/scratch``, an empty size-limited tmpfs: the only writable place.

The root of that tree is read-only too. Nothing else of the host exists
inside: not the repository, the data folder, the database, the home directory,
the host's ``/proc`` or any secret. The network namespace has only its own
loopback.

The sandbox's processes never run as the host's root. When the agency runs as
root, an outer ``bwrap`` (privileged, no user namespace; new mount, PID,
network, IPC and UTS namespaces) binds the same read-only runtime, a tiny shim
drops to uid/gid 65534 and execs the inner, unprivileged ``bwrap`` that builds
the sandbox above. That is needed because the kernel does not apply
``RLIMIT_NPROC`` to processes of the host's root (user namespace or not), and
because the runtime may sit under a folder uid 65534 cannot enter (``/root``).

Resource limits are set by the sandboxed interpreter's own first lines, before
any untrusted code (see :mod:`agency.tools.python_sandbox`); hard limits cannot
be raised again from inside.

Whether this works here is tested once per process by actually running a probe
through it (:func:`isolation_status`); where it does not, tools that run code
are not offered, and nothing falls back to a weaker mode.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "HOW_TO_ENABLE",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "SCRATCH",
    "IsolationStatus",
    "Runtime",
    "cached_status",
    "isolation_status",
    "kill_sandbox",
    "python_runtime",
    "sandbox_argv",
]

SCRATCH = "/scratch"  # the sandbox's working directory, HOME and TMPDIR
SANDBOX_UID = 65534  # nobody: the host uid sandboxed code runs as when the agency runs as root
SANDBOX_GID = 65534

HOW_TO_ENABLE = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make install` does it when run as root) "
    "and allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 where that exists; "
    "Ubuntu 24.04+: kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap); "
    "in Docker, run the container with --security-opt seccomp=unconfined --security-opt systempaths=unconfined "
    "(and --security-opt apparmor=unconfined where AppArmor is enforced)"
)

# Runs as root inside the outer bwrap only (never with untrusted code): drop to
# the sandbox uid for good, then exec the inner bwrap given as arguments.
_SHIM = (
    "import os, sys\n"
    "os.setgroups([])\n"
    f"os.setresgid({SANDBOX_GID}, {SANDBOX_GID}, {SANDBOX_GID})\n"
    f"os.setresuid({SANDBOX_UID}, {SANDBOX_UID}, {SANDBOX_UID})\n"
    f"assert os.getresuid() == ({SANDBOX_UID},) * 3 and os.getresgid() == ({SANDBOX_GID},) * 3\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@dataclass(frozen=True)
class Runtime:
    """The read-only Python runtime a sandbox sees, at the same paths as on the host."""

    executable: str
    ro_paths: tuple[str, ...]  # files or folders bound read-only at their host path
    hidden: tuple[str, ...]  # folders inside ro_paths covered by an empty read-only tmpfs
    symlinks: tuple[tuple[str, str], ...]  # (target, link), e.g. ("usr/lib", "/lib")


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_runtime() -> Runtime:
    """The interpreter running this process (the base one, not a venv's) and what it needs."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    wanted: list[str] = [exe]
    hidden: list[str] = []
    for key in ("stdlib", "platstdlib"):
        lib = sysconfig.get_path(key, vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
        if lib and os.path.isdir(lib):
            lib = os.path.realpath(lib)
            wanted.append(lib)
            for extra in ("site-packages", "dist-packages"):
                p = os.path.join(lib, extra)
                if os.path.isdir(p) and p not in hidden:
                    hidden.append(p)
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        for name in (sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")):
            p = os.path.join(libdir, name or "")
            if name and os.path.isfile(p):
                wanted.append(os.path.realpath(p))
                break
    symlinks: list[tuple[str, str]] = []
    for top in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32"):
        if os.path.isdir(top) and not os.path.islink(top):
            wanted.append(top)
    for top in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            target = os.readlink(top)
            resolved = os.path.realpath(top)
            if os.path.isdir(resolved) and any(_inside(resolved, w) for w in wanted):
                symlinks.append((target, top))
        elif os.path.isdir(top):
            wanted.append(top)
    for extra in ("/etc/ld.so.cache", "/usr/share/zoneinfo"):
        if os.path.exists(extra):
            wanted.append(os.path.realpath(extra))
    # drop what another entry already covers; keep the order
    ro: list[str] = []
    for p in wanted:
        if p not in ro and not any(_inside(p, q) for q in wanted if q != p):
            ro.append(p)
    return Runtime(exe, tuple(ro), tuple(h for h in hidden if any(_inside(h, q) for q in ro)), tuple(symlinks))


def _ancestors(paths: list[str]) -> list[str]:
    """Every parent folder of ``paths`` (not ``/``, not a path itself), shallowest first."""
    out: set[str] = set()
    for p in paths:
        parent = os.path.dirname(p)
        while parent not in ("/", ""):
            out.add(parent)
            parent = os.path.dirname(parent)
    return sorted(out - set(paths), key=lambda d: (d.count("/"), d))


def _runtime_binds(rt: Runtime) -> list[str]:
    args: list[str] = []
    for p in rt.ro_paths:
        args += ["--ro-bind", p, p]
    for target, link in rt.symlinks:
        args += ["--symlink", target, link]
    return args


def sandbox_argv(
    bwrap: str,
    rt: Runtime,
    command: list[str],
    *,
    scratch_bytes: int,
    info_fd: int,
    as_root: bool | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The argv that runs ``command`` in the sandbox; ``info_fd`` receives bwrap's
    ``{"child-pid": N}``: the host pid of the namespace's init, whose death ends
    every process of the sandbox."""
    if as_root is None:
        as_root = os.geteuid() == 0
    inner = [
        bwrap,
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--clearenv",
        "--hostname", "sandbox",
    ]
    for key, value in (env or {}).items():
        inner += ["--setenv", key, value]
    inner += _runtime_binds(rt)
    for h in rt.hidden:
        inner += ["--perms", "0555", "--size", "4096", "--tmpfs", h, "--remount-ro", h]
    inner += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "0700", "--size", str(scratch_bytes), "--tmpfs", SCRATCH,
        "--chdir", SCRATCH,
        "--remount-ro", "/dev",
        "--remount-ro", "/",
    ]
    if not as_root:
        return [*inner[:1], "--info-fd", str(info_fd), *inner[1:], "--", *command]
    # the host's root: an outer, privileged bwrap makes the runtime reachable,
    # the shim drops to SANDBOX_UID and execs the inner bwrap
    outer_paths = [*rt.ro_paths, bwrap, *(link for _, link in rt.symlinks), "/proc", "/dev", "/tmp"]
    outer = [
        bwrap,
        "--info-fd", str(info_fd),
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--clearenv",
    ]
    for d in _ancestors(outer_paths):
        outer += ["--perms", "0755", "--dir", d]
    outer += _runtime_binds(rt)
    outer += [
        "--ro-bind", bwrap, bwrap,
        # the inner bwrap mounts a new /proc: the kernel allows it only where a
        # fully visible proc is mounted already
        "--bind", "/proc", "/proc",
        "--dev", "/dev",
        "--size", str(1 << 20), "--tmpfs", "/tmp",  # bwrap builds its new root there
        "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
        "--remount-ro", "/",
        "--", rt.executable, "-I", "-S", "-B", "-c", _SHIM, *inner, "--", *command,
    ]
    return outer


def kill_sandbox(init_pid: int | None, bwrap_pid: int) -> None:
    """SIGKILL the namespace's init (the kernel then kills every process of the
    sandbox), after checking through a pidfd that the pid is still bwrap's child.
    Without a known init, kill bwrap's session: ``--die-with-parent`` follows."""
    if init_pid:
        try:
            fd = os.pidfd_open(init_pid)
        except (ProcessLookupError, OSError, AttributeError):
            fd = None
        if fd is not None:
            try:
                if _ppid(init_pid) == bwrap_pid:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    return
            except (OSError, AttributeError):
                pass
            finally:
                os.close(fd)
    for kill in (lambda: os.killpg(bwrap_pid, signal.SIGKILL), lambda: os.kill(bwrap_pid, signal.SIGKILL)):
        try:
            kill()
            return
        except (ProcessLookupError, PermissionError):
            continue


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def parse_info(data: bytes) -> int | None:
    """The init's host pid from bwrap's ``--info-fd`` output, once it is complete."""
    try:
        pid = json.loads(data.decode("utf-8", "replace")).get("child-pid")
    except ValueError:
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


# ---------------------------------------------------------------------------
# the probe: run a trivial sandbox once per process and check what it sees

@dataclass(frozen=True)
class IsolationStatus:
    available: bool
    name: str  # what the sandbox runs under, e.g. "bwrap 0.8.0: user+mount+pid+net namespaces, uid 65534"
    reason: str = ""  # why it is not available

    def describe(self) -> str:
        return self.name if self.available else f"none ({self.reason})"


_PROBE = r'''
import os, socket, sys
SCRATCH = "@SCRATCH@"
problems = []
if os.getpid() > 3:
    problems.append("not in a new PID namespace (pid %d)" % os.getpid())
names = sorted(n for _, n in socket.if_nameindex())
if names != ["lo"]:
    problems.append("network interfaces visible: %s" % names)
if open("/proc/self/uid_map").read().split() == ["0", "0", "4294967295"]:
    problems.append("not in a new user namespace")
for p in sys.argv[1:]:
    if os.path.exists(p):
        problems.append("host path visible: " + p)
if os.environ.get("ATEAMS_PROBE_SECRET"):
    problems.append("the environment leaked")
# looked at, never written: where the isolation is fake, this runs on the host
if not os.statvfs("/").f_flag & os.ST_RDONLY:
    problems.append("the root folder is writable")
if os.getcwd() != SCRATCH or os.statvfs(SCRATCH).f_flag & os.ST_RDONLY:
    problems.append("no writable scratch folder")
print("; ".join(problems) if problems else "isolated")
'''.replace("@SCRATCH@", SCRATCH)

_lock = threading.Lock()
_status: IsolationStatus | None = None


def _bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=5, env={}, check=False)
        return out.stdout.strip() or "bwrap"
    except (OSError, subprocess.SubprocessError):
        return "bwrap"


def _probe() -> IsolationStatus:
    if not sys.platform.startswith("linux"):
        return IsolationStatus(False, "", f"process isolation needs Linux namespaces (this is {sys.platform})")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return IsolationStatus(False, "", "bubblewrap (bwrap) is not installed")
    bwrap = os.path.realpath(bwrap)
    as_root = os.geteuid() == 0
    rt = python_runtime()
    host_paths = [p for p in {os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              os.path.expanduser("~"), sys.prefix} if p not in ("/", "")]
    host_paths = [p for p in host_paths if not any(_inside(p, q) or _inside(q, p) for q in rt.ro_paths)]
    r, w = os.pipe2(os.O_CLOEXEC)
    argv = sandbox_argv(bwrap, rt, [rt.executable, "-I", "-S", "-B", "-c", _PROBE, *host_paths],
                        scratch_bytes=1 << 20, info_fd=w, as_root=as_root, env={"LANG": "C.UTF-8"})
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, pass_fds=(w,),
                              env={"ATEAMS_PROBE_SECRET": "x"}, cwd="/", start_new_session=True, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return IsolationStatus(False, "", f"bwrap could not run: {exc}")
    finally:
        os.close(w)
        os.close(r)
    out = proc.stdout.decode(errors="replace").strip()
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0 or out != "isolated":
        detail = (out if out and out != "isolated" else err.splitlines()[-1] if err else f"exit status {proc.returncode}")
        return IsolationStatus(False, "", f"the bwrap sandbox does not work here: {detail[:300]}")
    who = f"uid {SANDBOX_UID} via a privileged outer bwrap" if as_root else f"uid {os.geteuid()}"
    name = f"{_bwrap_version(bwrap)}: user+mount+pid+net+ipc+uts namespaces, {who}, read-only runtime, {SCRATCH} tmpfs"
    return IsolationStatus(True, name)


def cached_status() -> IsolationStatus | None:
    """The probe's result if it has run in this process, without running it."""
    return _status


def isolation_status(*, refresh: bool = False) -> IsolationStatus:
    """Whether sandboxed code can run here, probed once per process (a real run, ~0.1 s)."""
    global _status
    with _lock:
        if _status is None or refresh:
            _status = _probe()
            if _status.available:
                log.info("sandbox: tools that run code are isolated with %s", _status.name)
            else:
                log.warning("sandbox: no process isolation here (%s); the python tool is OFF and not offered "
                            "to models. To turn it on: %s.", _status.reason, HOW_TO_ENABLE)
        return _status
