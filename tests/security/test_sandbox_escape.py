"""The escape corpus for tools that run code (issue 12, defects 1 and 2).

Each attempt goes through the tool's real code path, the call the engine
makes (``ToolRegistry.execute_many`` with a ``python`` call), and tries to
leave a trace on the host: change a SQLite database outside the scratch
folder, create a file, reach a listener on 127.0.0.1, read a secret, survive
the run. Each test asserts the trace is absent, and records which isolation
it ran under (``record_property("isolation", ...)``, also printed). Where this
machine has no real isolation, each test asserts instead that the tool
refuses to start: it is not offered and a call is refused.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agency.tools import (
    SandboxLimits,
    ToolCall,
    ToolContext,
    ToolPolicy,
    ToolResult,
    build_registry,
)
from agency.tools.isolation import isolation_status

STATUS = isolation_status()
LIMITS = SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=8, output_chars=6000, file_mb=2, scratch_mb=8,
                       processes=6)
QUICK = SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=2, output_chars=2000, processes=6)
CTX = ToolContext(agency_id=1, member="Engineer-A", role="specialist", project_id=1, task_key="T1")
REPO = Path(__file__).resolve().parents[2]

Attempt = Callable[..., Awaitable[ToolResult | None]]


@pytest.fixture
def attempt(record_property: Callable[[str, object], None]) -> Attempt:
    """Run ``code`` as the engine does; ``None`` when the tool (correctly) refused to start."""

    async def run(code: str, limits: SandboxLimits = LIMITS) -> ToolResult | None:
        reg = build_registry(ToolPolicy(python=limits))
        [result] = await reg.execute_many([ToolCall(tool="python", args={"code": textwrap.dedent(code)})], CTX)
        record_property("isolation", STATUS.describe())
        print(f"isolation: {STATUS.describe()}")
        if not STATUS.available:
            assert reg.get("python") is None and "python" not in reg.describe_for("specialist")
            assert not result.ok and result.error is not None and "not available on this machine" in result.error
            return None
        tool = reg.get("python")
        assert tool is not None and tool.isolation == STATUS.name  # it ran under the probed isolation
        print(result.for_agent())
        return result

    return run


def make_db(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("create table projects (id integer primary key, budget_usd real)")
    db.execute("insert into projects values (1, 0.5)")
    db.commit()
    db.close()
    return digest(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def budget(path: Path) -> float:
    db = sqlite3.connect(path)
    try:
        return db.execute("select budget_usd from projects where id = 1").fetchone()[0]
    finally:
        db.close()


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker`` (sandboxed processes tag themselves with it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "data" / "ateams.db"
    yield path, make_db(path)


# ---------------------------------------------------------------------------
# the agency's state: the database and files outside the scratch folder


async def test_the_database_outside_cannot_be_opened_or_changed(attempt: Attempt, db: tuple[Path, str]) -> None:
    path, before = db
    res = await attempt(f"""
        import os, sqlite3
        DB = {str(path)!r}
        print("visible:", os.path.exists(DB), os.path.exists(os.path.dirname(DB)))
        for target in (DB, "file:" + DB + "?mode=rw", "/data/ateams.db", {str(REPO / ".ateams" / "ateams.db")!r}):
            try:
                c = sqlite3.connect(target, uri=target.startswith("file:"))
                c.execute("update projects set budget_usd = 1000 where id = 1")
                c.commit()
                print("ESCAPED", target)
            except sqlite3.Error as e:
                print("blocked:", target, e)
    """)
    assert budget(path) == 0.5 and digest(path) == before
    if res is None:
        return
    assert "ESCAPED" not in res.output
    assert "visible: False False" in res.output
    assert res.output.count("blocked:") == 4


async def test_dir_fd_cannot_reach_outside(attempt: Attempt, db: tuple[Path, str], tmp_path: Path) -> None:
    path, before = db
    mark = tmp_path / "created-through-dir-fd"
    res = await attempt(f"""
        import os
        DB, MARK = {str(path)!r}, {str(mark)!r}
        rel_db, rel_mark = os.path.relpath(DB, "/"), os.path.relpath(MARK, "/")
        for base, prefix in (("/", ""), ("/scratch", "../" * 30), ("/proc/self/cwd", "../" * 30),
                             ("/proc/1/root", ""), ("/proc/self/root", "")):
            try:
                d = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                print("blocked", base, e.strerror)
                continue
            for rel, flags in ((rel_db, os.O_RDWR), (rel_mark, os.O_WRONLY | os.O_CREAT)):
                try:
                    fd = os.open(prefix + rel, flags, dir_fd=d)
                    os.write(fd, b"x")
                    print("ESCAPED", base, rel)
                except OSError as e:
                    print("blocked", base, e.strerror)
    """)
    assert digest(path) == before and not mark.exists()
    if res is None:
        return
    assert "ESCAPED" not in res.output and "blocked" in res.output


async def test_replacing_guard_closures_gains_nothing(attempt: Attempt, db: tuple[Path, str], tmp_path: Path) -> None:
    # the old in-process guard could be disarmed by rewriting its closure cells;
    # there is no such guard now, and disarming whatever lives in the interpreter changes nothing
    path, before = db
    mark = tmp_path / "after-disarming"
    res = await attempt(f"""
        import gc, sys, types
        changed = 0
        for obj in gc.get_objects():
            if isinstance(obj, types.FunctionType) and obj.__closure__:
                for cell in obj.__closure__:
                    try:
                        v = cell.cell_contents
                    except ValueError:
                        continue
                    if isinstance(v, (tuple, frozenset)) and v and all(isinstance(x, str) for x in v):
                        cell.cell_contents = type(v)(["/"])
                        changed += 1
        sys.addaudithook(lambda *a: None)
        print("cells changed:", changed)
        for target, mode in (({str(path)!r}, "r+b"), ({str(mark)!r}, "wb")):
            try:
                open(target, mode).write(b"pwned")
                print("ESCAPED", target)
            except OSError as e:
                print("blocked", e.strerror)
    """)
    assert digest(path) == before and not mark.exists()
    if res is None:
        return
    assert "ESCAPED" not in res.output and res.output.count("blocked") == 2


async def test_the_runtime_of_the_agency_cannot_be_changed(attempt: Attempt) -> None:
    target = Path(os.__file__)
    before = digest(target)
    res = await attempt(f"""
        import os, sysconfig
        for p in ({str(target)!r}, os.path.join(sysconfig.get_path("stdlib"), "sitecustomize.py"),
                  os.path.join(sysconfig.get_path("stdlib"), "site-packages", "x.pth")):
            try:
                open(p, "a").write("import os; os.system('true')\\n")
                print("ESCAPED", p)
            except OSError as e:
                print("blocked", e.strerror)
    """)
    assert digest(target) == before
    assert not (target.parent / "sitecustomize.py").exists()
    if res is None:
        return
    assert "ESCAPED" not in res.output and res.output.count("blocked") == 3


async def test_host_files_do_not_exist_inside(attempt: Attempt, tmp_path: Path) -> None:
    secret = tmp_path / ".env"
    secret.write_text("DISCORD_TOKEN=not-for-models\n")
    candidates = [secret, REPO / "pyproject.toml", REPO / "agency" / "__init__.py", Path(sys.prefix) / "pyvenv.cfg",
                  Path("/etc/passwd"), Path("/etc/hostname"), Path.home() / ".profile", Path.home() / ".bashrc",
                  Path.home() / ".ssh"]
    present = [str(p) for p in candidates if p.exists()]
    assert str(secret) in present and str(REPO / "pyproject.toml") in present  # the control: they exist out here
    res = await attempt(f"""
        import os
        for p in {present!r}:
            if os.path.exists(p):
                print("VISIBLE", p)
        print("checked", {len(present)})
    """)
    if res is None:
        return
    assert "VISIBLE" not in res.output and f"checked {len(present)}" in res.output


async def test_symlinks_lead_nowhere_outside(attempt: Attempt, db: tuple[Path, str], tmp_path: Path) -> None:
    path, before = db
    mark = tmp_path / "written-through-a-link"
    res = await attempt(f"""
        import os
        DB, MARK = {str(path)!r}, {str(mark)!r}
        links = {{"db": DB, "mark": MARK, "root": "/", "init-root": "/proc/1/root", "up": "../../../../.."}}
        for name, target in links.items():
            os.symlink(target, name)
        tries = [("db", "r+b"), ("mark", "wb"), ("root" + DB, "r+b"), ("init-root" + DB, "r+b"),
                 ("up" + DB, "r+b"), ("/proc/self/root" + MARK, "wb")]
        for p, mode in tries:
            try:
                open(p, mode).write(b"pwned")
                print("ESCAPED", p)
            except OSError as e:
                print("blocked", e.strerror)
        try:
            os.link(DB, "hard")
            print("ESCAPED hard link")
        except OSError as e:
            print("blocked", e.strerror)
    """)
    assert digest(path) == before and not mark.exists()
    if res is None:
        return
    assert "ESCAPED" not in res.output and res.output.count("blocked") == 7


async def test_no_descriptor_of_the_agency_is_inherited(attempt: Attempt, db: tuple[Path, str]) -> None:
    path, before = db
    held = sqlite3.connect(path)  # the agency keeps its database open while tools run
    held.execute("select 1 from projects").fetchall()
    raw = os.open(path, os.O_RDWR)
    os.set_inheritable(raw, True)  # even a descriptor marked inheritable stays out
    try:
        res = await attempt("""
            import os
            for fd in range(3, 1024):
                try:
                    os.fstat(fd)
                except OSError:
                    continue
                try:
                    print("open fd", fd, os.readlink("/proc/self/fd/%d" % fd))
                    os.lseek(fd, 0, 0)
                    os.write(fd, b"pwned")
                    print("ESCAPED", fd)
                except OSError as e:
                    print("fd", fd, e.strerror)
            print("checked")
        """)
    finally:
        os.close(raw)
        held.close()
    assert digest(path) == before
    if res is None:
        return
    assert "checked" in res.output
    assert "ESCAPED" not in res.output and "ateams.db" not in res.output


# ---------------------------------------------------------------------------
# processes


async def test_starting_processes_reaches_nothing_outside(attempt: Attempt, tmp_path: Path) -> None:
    mark = tmp_path / "made-by-a-process"
    res = await attempt(f"""
        import importlib, os, subprocess, sys
        MARK = {str(mark)!r}
        WRITE = "open(%r, 'w').write('pwned')" % MARK
        # _posixsubprocess under another name, then used the way subprocess uses it
        renamed = importlib.import_module("_posixsubprocess")
        sys.modules["innocent"] = renamed
        subprocess._fork_exec = sys.modules["innocent"].fork_exec
        attempts = {{
            "shell": lambda: subprocess.run(["/bin/sh", "-c", "echo pwned > " + MARK]).returncode,
            "python child": lambda: subprocess.run([sys.executable, "-c", WRITE], capture_output=True).returncode,
            "os.system": lambda: os.system("echo pwned > " + MARK),
            "posix_spawn": lambda: os.waitpid(os.posix_spawn(sys.executable, [sys.executable, "-c", WRITE], {{}}), 0)[1],
            "/usr/bin/env": lambda: subprocess.run(["/usr/bin/env"]).returncode,
        }}
        for name, run in attempts.items():
            try:
                print(name, "->", run())
            except OSError as e:
                print(name, "-> blocked", e.strerror)
        print("exists inside:", os.path.exists(MARK), flush=True)
        os.execv(sys.executable, [sys.executable, "-c", WRITE])  # finally replace ourselves
    """)
    assert not mark.exists()
    if res is None:
        return
    assert not res.ok  # the last attempt, the exec'd writer, failed too
    assert "FileNotFoundError" in res.output and "exists inside: False" in res.output
    assert "shell -> blocked" in res.output and "/usr/bin/env -> blocked" in res.output


async def test_fork_cannot_touch_the_host(attempt: Attempt, tmp_path: Path) -> None:
    mark = tmp_path / "made-by-a-fork"
    targets = tuple(p for p in (os.getpid(), os.getppid()) if p > 100)  # host pids; 1-3 exist inside too
    res = await attempt(f"""
        import os, signal
        pid = os.fork()
        if pid == 0:
            for target in {targets!r}:
                try:
                    os.kill(target, signal.SIGKILL)
                    print("ESCAPED kill", target, flush=True)
                except OSError as e:
                    print("kill blocked", e.strerror, flush=True)
            try:
                open({str(mark)!r}, "w").write("pwned")
                print("ESCAPED write", flush=True)
            except OSError as e:
                print("write blocked", e.strerror, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent sees pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    """)
    assert not mark.exists()
    if res is None:
        return
    assert res.ok, res.error
    assert "ESCAPED" not in res.output
    assert res.output.count("kill blocked") == len(targets) and "write blocked" in res.output
    assert "parent sees pids [1, 2]" in res.output  # its own PID namespace: bwrap's init and itself


async def test_ctypes_system_calls_stay_inside(attempt: Attempt, db: tuple[Path, str]) -> None:
    path, before = db
    res = await attempt(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        DB = {str(path)!r}.encode()
        calls = {{
            "open db": lambda: libc.open(DB, os.O_RDWR),
            "setuid 0": lambda: libc.setuid(0),
            "unshare user": lambda: libc.unshare(0x10000000),
            "unshare mount": lambda: libc.unshare(0x00020000),
            "remount / rw": lambda: libc.mount(b"none", b"/", None, 32 | 4096, None),
            "chroot": lambda: libc.chroot(b"/proc/1/root"),
            "setns net": lambda: libc.setns(os.open("/proc/1/ns/net", os.O_RDONLY), 0),
        }}
        for name, call in calls.items():
            try:
                rc = call()
            except OSError as e:
                print(name, "blocked", e.strerror)
                continue
            print(name, "blocked" if rc == -1 else "ESCAPED", os.strerror(ctypes.get_errno()))
    """)
    assert digest(path) == before
    if res is None:
        return
    assert "ESCAPED" not in res.output and res.output.count("blocked") == 7


async def test_a_fork_bomb_is_contained(attempt: Attempt) -> None:
    marker = f"ateams-fork-bomb-{uuid.uuid4().hex}"
    run = asyncio.create_task(attempt(f"""
        import os, sys
        BOMB = "import os, time\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        time.sleep(0.01)\\n"
        os.execv(sys.executable, [sys.executable, "-c", BOMB, {marker!r}])  # every copy carries the marker
    """, QUICK))
    seen = 0  # the most copies alive at once, counted from the host while the bomb runs
    while not run.done():
        seen = max(seen, len(host_processes_with(marker)))
        await asyncio.sleep(0.05)
    res = run.result()
    assert host_processes_with(marker) == []  # the whole tree is gone when the call returns
    assert seen <= QUICK.processes
    if res is None:
        return
    assert seen >= 2  # it did fork, up to the limit
    assert not res.ok and res.error is not None
    assert "time limit (2 s) exceeded" in res.error or "CPU limit" in res.error


async def test_nothing_outlives_the_time_limit(attempt: Attempt, tmp_path: Path) -> None:
    marker = f"ateams-daemon-{uuid.uuid4().hex}"
    mark = tmp_path / "written-after-the-run"
    res = await attempt(f"""
        import os, sys, time
        LATE = "import time\\ntime.sleep(1.5)\\nopen(%r, 'w').write('still alive')" % {str(mark)!r}
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # a daemon: new session, orphaned, re-exec'd
                os.execv(sys.executable, [sys.executable, "-c", LATE, {marker!r}])
            os._exit(0)
        print("daemon started", flush=True)
        time.sleep(60)
    """, QUICK)
    assert host_processes_with(marker) == []
    assert not mark.exists()
    if res is None:
        return
    assert res.error == "time limit (2 s) exceeded; the process was stopped"
    assert "daemon started" in res.output


async def test_nothing_outlives_a_normal_exit(attempt: Attempt) -> None:
    marker = f"ateams-leftover-{uuid.uuid4().hex}"
    res = await attempt(f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        print("leaving a child behind")
    """, QUICK)
    assert host_processes_with(marker) == []
    if res is None:
        return
    assert res.ok and "leaving a child behind" in res.output


# ---------------------------------------------------------------------------
# secrets and the network


async def test_secrets_are_in_no_environment_it_can_read(attempt: Attempt, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("DISCORD_TOKEN", "discord-" + secret)
    res = await attempt(f"""
        import glob, os
        print(dict(os.environ))
        for p in sorted({{"/proc/1/environ", "/proc/%d/environ" % os.getppid(), "/proc/self/environ",
                         "/proc/{os.getpid()}/environ", "/proc/{os.getppid()}/environ", *glob.glob("/proc/*/environ")}}):
            try:
                print(p, open(p, "rb").read())
            except OSError as e:
                print(p, "blocked", e.strerror)
    """)
    if res is None:
        return
    assert secret not in res.output
    assert "OPENAI_API_KEY" not in res.output and "DISCORD_TOKEN" not in res.output


def test_the_parents_environment_is_out_of_reach() -> None:
    # the original attack: the agency was started with its keys in the environment, and
    # sandboxed code read them from the parent's /proc/<ppid>/environ. Run the tool from
    # such a process (the keys in its real, initial environment) and try every environ.
    secret = "sk-test-" + uuid.uuid4().hex
    script = textwrap.dedent("""
        import asyncio, json, os
        from agency.tools import SandboxLimits, ToolCall, ToolContext, ToolPolicy, build_registry
        from agency.tools.isolation import isolation_status

        CODE = '''
        import glob, os
        for p in sorted({"/proc/1/environ", "/proc/%d/environ" % os.getppid(), "/proc/self/environ",
                         "/proc/HOST/environ", *glob.glob("/proc/*/environ")}):
            try:
                print(p, open(p, "rb").read())
            except OSError as e:
                print(p, "blocked", e.strerror)
        print(dict(os.environ))
        '''.replace("HOST", str(os.getpid()))

        async def main():
            reg = build_registry(ToolPolicy(python=SandboxLimits(wall_seconds=8)))
            ctx = ToolContext(agency_id=1, member="Engineer-A", role="specialist")
            [r] = await reg.execute_many([ToolCall(tool="python", args={"code": CODE})], ctx)
            control = open("/proc/%d/environ" % os.getpid(), "rb").read().decode(errors="replace")
            print(json.dumps({"ok": r.ok, "error": r.error, "output": r.output, "control": control,
                              "isolation": isolation_status().describe(), "offered": reg.get("python") is not None}))

        asyncio.run(main())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATEAMS_")}
    env.update(OPENAI_API_KEY=secret, DISCORD_TOKEN="discord-" + secret)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"isolation: {report['isolation']}")
    assert secret in report["control"]  # the control: the agency process really holds the key
    if not STATUS.available:
        assert not report["offered"] and not report["ok"] and "not available" in report["error"]
        return
    assert report["isolation"] == STATUS.name
    assert report["ok"], report["error"]
    assert secret not in report["output"] and "OPENAI_API_KEY" not in report["output"]
    assert "/proc/1/environ" in report["output"]  # the attempts did run


class Listeners:
    """TCP and UDP on 127.0.0.1, a Unix socket in a folder and an abstract Unix socket, all counting."""

    def __init__(self, folder: Path) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(folder / "agency.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.abstract_name = "\0ateams-test-" + uuid.uuid4().hex
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen()
        self.hits: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, args=(s, n), daemon=True)
                         for s, n in ((self.tcp, "tcp"), (self.unix, "unix"), (self.abstract, "abstract"))]
        self._threads.append(threading.Thread(target=self._recv, daemon=True))
        for t in self._threads:
            t.start()

    def _accept(self, sock: socket.socket, name: str) -> None:
        sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            self.hits.append(name)
            conn.close()

    def _recv(self) -> None:
        self.udp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.udp.recv(100)
            except OSError:
                continue
            self.hits.append("udp")

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in (self.tcp, self.udp, self.unix, self.abstract):
            s.close()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Listeners]:
    lst = Listeners(tmp_path)
    yield lst
    lst.close()


async def test_no_socket_reaches_the_host(attempt: Attempt, listeners: Listeners) -> None:
    # the control: each listener is reachable from out here (connections counted, then forgotten)
    for family, address in ((socket.AF_INET, ("127.0.0.1", listeners.tcp.getsockname()[1])),
                            (socket.AF_UNIX, listeners.unix_path), (socket.AF_UNIX, listeners.abstract_name)):
        with socket.socket(family) as s:
            s.connect(address)
    for _ in range(100):
        if len(listeners.hits) >= 3:
            break
        threading.Event().wait(0.02)
    assert sorted(listeners.hits) == ["abstract", "tcp", "unix"]
    listeners.hits.clear()

    tcp, udp = listeners.tcp.getsockname()[1], listeners.udp.getsockname()[1]
    res = await attempt(f"""
        import socket, _socket
        def tcp():
            socket.create_connection(("127.0.0.1", {tcp}), timeout=1).close()
        def raw():
            s = _socket.socket(); s.settimeout(1); s.connect(("127.0.0.1", {tcp}))
        def ipv6():
            socket.create_connection(("::1", {tcp}), timeout=1).close()
        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("127.0.0.1", {udp}))
            s.sendto(b"x", ("127.0.0.1", {udp}))
        def unix():
            s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect({listeners.unix_path!r})
        def abstract():
            s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect({listeners.abstract_name!r})
        def outside():  # TEST-NET-1 (RFC 5737): routed nowhere even if it got out
            socket.create_connection(("192.0.2.1", 80), timeout=1).close()
        for name, f in list(globals().items()):
            if callable(f) and f.__module__ == "__main__" and not name.startswith("_"):
                try:
                    f()
                    print("sent", name)
                except OSError as e:
                    print(name, "blocked", e.strerror or e)
        print(sorted(n for _, n in socket.if_nameindex()))
    """)
    threading.Event().wait(0.3)  # a datagram or connection that got out would have landed by now
    assert listeners.hits == []
    if res is None:
        return
    assert "['lo']" in res.output  # its own network namespace: only a private loopback
    for name in ("tcp", "raw", "ipv6", "unix", "abstract", "outside"):
        assert f"{name} blocked" in res.output, name


# ---------------------------------------------------------------------------
# resources


async def test_filling_the_disk_stops_at_the_limits(attempt: Attempt) -> None:
    res = await attempt("""
        import os
        total = 0
        try:
            with open("one-big-file", "wb") as f:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
                    total += 65536
        except OSError as e:
            print("big file stopped:", total // 1024 // 1024, "MB", e.strerror)
        total, i = 0, 0
        try:
            while True:
                with open("many-%d" % i, "wb") as f:
                    f.write(b"x" * (1024 * 1024))
                total += 1024 * 1024
                i += 1
        except OSError as e:
            print("many files stopped:", total // 1024 // 1024, "MB", e.strerror)
        for p in ("/fill", "/tmp/fill", "/dev/shm/fill", "/proc/fill"):
            try:
                open(p, "wb").write(b"x")
                print("ESCAPED", p)
            except OSError as e:
                print("blocked", p, e.strerror)
    """)
    if res is None:
        return
    assert res.ok, res.error
    assert "big file stopped: 2 MB File too large" in res.output  # file_mb = 2
    stopped = [line for line in res.output.splitlines() if line.startswith("many files stopped:")]
    assert stopped and int(stopped[0].split()[3]) <= LIMITS.scratch_mb and "No space left on device" in stopped[0]
    assert "ESCAPED" not in res.output and res.output.count("blocked") == 4
