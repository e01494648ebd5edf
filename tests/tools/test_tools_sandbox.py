"""The python sandbox: limits, isolation, output (acceptance: runaway loop,
memory bomb and network call each stopped), and the refusal where no real
isolation can be had. The escape corpus is tests/security/test_sandbox_escape.py."""
from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agency.tools import (
    PythonSandbox,
    PythonTool,
    SandboxLimits,
    ToolCall,
    ToolContext,
    ToolPolicy,
    build_registry,
    isolation,
)
from agency.tools.python_sandbox import SandboxUnavailable

FAST = SandboxLimits(cpu_seconds=1, memory_mb=128, wall_seconds=3, output_chars=500)
# CPU seconds are not wall seconds on a busy machine: the CPU-limit tests get a wall limit far above them
CPU_BOUND = SandboxLimits(cpu_seconds=1, memory_mb=128, wall_seconds=20, output_chars=500)
CTX = ToolContext(agency_id=1, member="Analyst-A", role="specialist", project_id=7)
STATUS = isolation.isolation_status()
needs_isolation = pytest.mark.skipif(
    not STATUS.available,
    reason=f"no process isolation here ({STATUS.reason}); test_the_tool_refuses_without_isolation covers this machine",
)


@pytest.fixture
def sandbox() -> PythonSandbox:
    return PythonSandbox(FAST)


class Listener:
    """A TCP server on 127.0.0.1 in the test process that counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Lets a test re-probe under changed conditions; the next test probes this machine again."""
    yield
    isolation._status = None


# ---------------------------------------------------------------------------
# where there is no isolation: refused, never weaker


async def test_the_tool_refuses_without_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  fresh_probe: None, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    with caplog.at_level(logging.WARNING, logger="agency.tools.isolation"):
        status = isolation.isolation_status(refresh=True)
    assert not status.available and "bubblewrap (bwrap) is not installed" in status.reason
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "the python tool is OFF" in warning and "install bubblewrap" in warning and "seccomp=unconfined" in warning

    reg = build_registry(ToolPolicy(python=FAST))
    assert reg.get("python") is None
    assert "python" not in reg.describe_for("specialist")
    assert "- retrieve:" in reg.describe_for("specialist")
    result = await reg.execute(ToolCall(tool="python", args={"code": "print(1)"}), CTX)
    assert not result.ok
    assert result.error is not None and "not available on this machine" in result.error

    with pytest.raises(SandboxUnavailable, match="not available here"):
        await PythonSandbox(FAST).run("print(1)")
    tool = PythonTool(FAST)  # even built by hand, the tool does not run code
    with pytest.raises(SandboxUnavailable):
        await tool.run(tool.Args(code="print(1)"), CTX)


def test_a_bwrap_that_does_not_isolate_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  fresh_probe: None) -> None:
    # a stand-in "bwrap" that runs the command directly: the probe must notice, not trust the name
    fake = tmp_path / "bwrap"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "if args == ['--version']:\n"
        "    print('bubblewrap 0.0-fake'); sys.exit(0)\n"
        "cmd = args[len(args) - 1 - args[::-1].index('--') + 1:]\n"
        "os.execv(cmd[0], cmd)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", str(tmp_path))
    status = isolation.isolation_status(refresh=True)
    assert not status.available
    assert "does not work here" in status.reason
    assert build_registry().get("python") is None


def test_the_python_tool_is_offered_only_with_isolation() -> None:
    reg = build_registry()
    if STATUS.available:
        assert isinstance(reg.get("python"), PythonTool)
        assert "- python:" in reg.describe_for("specialist")
    else:
        assert reg.get("python") is None
        assert "python" not in reg.describe_for("specialist")
    # disabled by policy: not probed for, not offered (refused as disabled: test_tools_registry)
    off = build_registry(ToolPolicy(enabled=frozenset({"retrieve"})))
    assert off.unavailable == {} and "python" not in off.describe_for("specialist")


# ---------------------------------------------------------------------------
# real runs


@needs_isolation
async def test_listener_is_reachable_from_the_test_process(listener: Listener) -> None:
    # the control: the port really is open outside the sandbox
    with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
        pass
    for _ in range(20):
        if listener.accepted:
            break
        threading.Event().wait(0.05)
    assert listener.accepted == 1


@needs_isolation
async def test_normal_code_prints_its_result(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("print(sum(range(10)))\n2 ** 10")
    assert res.ok, res.stderr
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["45", "1024"]
    assert res.isolation == STATUS.name and res.isolation.startswith("bubblewrap")


@needs_isolation
async def test_runaway_loop_is_stopped_by_the_cpu_limit() -> None:
    res = await PythonSandbox(CPU_BOUND).run("while True:\n    pass")
    assert not res.ok
    assert res.reason is not None and "CPU limit (1 s) exceeded" in res.reason


@needs_isolation
async def test_sleeping_code_is_stopped_by_the_wall_clock_limit() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=5, memory_mb=128, wall_seconds=1, output_chars=500))
    res = await sb.run("import time\nprint('started', flush=True)\ntime.sleep(30)")
    assert res.reason == "time limit (1 s) exceeded; the process was stopped"
    assert res.stdout.startswith("started")
    assert 1000 <= res.duration_ms < 10_000


@needs_isolation
@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(2 * 1024 ** 3)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 1024 ** 2))",
    ],
    ids=["one-big-allocation", "growing-list"],
)
async def test_memory_bomb_is_stopped(sandbox: PythonSandbox, code: str) -> None:
    res = await sandbox.run(code)
    assert not res.ok
    assert res.reason is not None and "memory limit (128 MB) exceeded" in res.reason


CONNECT_LOOPBACK = "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')"
CONNECT_RAW = "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('CONNECTED')"
CONNECT_EXTERNAL = "import urllib.request\nurllib.request.urlopen('http://example.com/', timeout=2)\nprint('CONNECTED')"
RESOLVE_EXTERNAL = "import socket\nprint(socket.gethostbyname('example.com'))\nprint('CONNECTED')"


@needs_isolation
@pytest.mark.parametrize("template", [CONNECT_LOOPBACK, CONNECT_RAW, CONNECT_EXTERNAL, RESOLVE_EXTERNAL],
                         ids=["loopback", "raw-socket", "external-url", "dns"])
async def test_network_call_is_stopped_by_the_network_namespace(sandbox: PythonSandbox, listener: Listener,
                                                                template: str) -> None:
    # nothing in the interpreter stands in the way: only the kernel does
    res = await sandbox.run(template.format(port=listener.port))
    assert not res.ok
    assert res.reason == "network is disabled in the sandbox"
    assert "CONNECTED" not in res.stdout
    assert listener.accepted == 0


@needs_isolation
async def test_only_a_private_loopback_exists(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("import socket\nprint(sorted(n for _, n in socket.if_nameindex()))")
    assert res.ok, res.stderr
    assert res.stdout.strip() == "['lo']"


@needs_isolation
async def test_output_is_capped_and_a_flood_is_stopped(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("while True:\n    print('x' * 100)")
    assert res.truncated
    assert res.reason == "output limit (500 characters) exceeded; the process was stopped"
    assert len(res.stdout) <= 500 * 4 + 1024


@needs_isolation
async def test_long_output_is_truncated_for_the_agent() -> None:
    tool = PythonTool(FAST)
    result = await tool.run(tool.Args(code="print('y' * 3000)\nprint('END')"), CTX)
    assert result.ok
    assert result.truncated
    assert len(result.output) <= 500
    assert "characters cut" in result.output
    assert result.output.rstrip().endswith("END")  # the tail is kept
    assert tool.isolation == STATUS.name


@needs_isolation
async def test_working_directory_is_an_empty_private_scratch(sandbox: PythonSandbox) -> None:
    code = (
        "import os, tempfile\n"
        "print(os.listdir('.'))\n"
        "print(os.getcwd(), os.environ['HOME'], tempfile.gettempdir())\n"
        "open('scratch.txt', 'w').write('hello')\n"
        "print(open('scratch.txt').read())\n"
    )
    res = await sandbox.run(code)
    assert res.ok, res.stderr
    listing, dirs, content = res.stdout.splitlines()
    assert listing == "[]"
    assert dirs == "/scratch /scratch /scratch"
    assert content == "hello"
    assert not os.path.exists("/scratch/scratch.txt")  # a tmpfs of the sandbox, not a host folder

    second = await sandbox.run("import os\nprint(os.listdir('.'))")
    assert second.stdout.strip() == "[]"  # nothing persists between runs


@needs_isolation
async def test_environment_has_no_secrets(sandbox: PythonSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token-not-for-the-sandbox")
    res = await sandbox.run("import os\nprint(sorted(os.environ))\nprint(dict(os.environ))")
    assert res.ok, res.stderr
    assert "OPENAI_API_KEY" not in res.stdout
    assert "DISCORD_TOKEN" not in res.stdout
    assert "not-for-the-sandbox" not in res.stdout
    assert "'HOME', 'LANG'" in res.stdout


@needs_isolation
async def test_files_outside_the_sandbox_do_not_exist_in_it(sandbox: PythonSandbox, tmp_path: Path) -> None:
    secret = tmp_path / ".env"
    secret.write_text("DISCORD_TOKEN=very-secret\n")
    res = await sandbox.run(f"print(open({str(secret)!r}).read())")
    assert not res.ok
    assert "very-secret" not in res.stdout
    assert res.reason is not None and res.reason.startswith("FileNotFoundError")

    target = tmp_path / "written.txt"
    res = await sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert res.reason is not None and res.reason.startswith("FileNotFoundError")
    assert not target.exists()

    res = await sandbox.run(f"print(open('../../../../../../../..{secret!s}').read())")
    assert "very-secret" not in res.stdout and not res.ok


@needs_isolation
async def test_the_runtime_is_read_only(sandbox: PythonSandbox) -> None:
    before = Path(os.__file__).read_bytes()
    res = await sandbox.run("import os\nprint(bool(os.statvfs(os.__file__).f_flag & os.ST_RDONLY))\n"
                            "open(os.__file__, 'a').write('# changed')")
    assert res.stdout.strip() == "True"  # a read-only mount, whoever owns the files
    assert res.reason is not None and ("Read-only file system" in res.reason or "Permission denied" in res.reason)
    assert Path(os.__file__).read_bytes() == before
    res = await sandbox.run("open('/new-file', 'w')")
    assert res.reason is not None and "Read-only file system" in res.reason


@needs_isolation
async def test_processes_stay_inside(sandbox: PythonSandbox) -> None:
    # there is no shell or other program in the sandbox, and the interpreter's children are limited
    res = await sandbox.run("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo hi'])")
    assert res.reason is not None and "No such file or directory: '/bin/sh'" in res.reason
    res = await sandbox.run("import os\nprint(os.system('echo hi'))")
    assert res.stdout.strip() == str(127 << 8)  # the shell is missing
    res = await sandbox.run("import os, sys\nprint(os.getpid(), os.getppid())\n"
                            "import subprocess\nprint(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],"
                            " capture_output=True, text=True).stdout)")
    assert res.ok, res.stderr
    first, child = res.stdout.split("\n")[:2]
    assert first == "2 1"  # its own PID namespace: bwrap's init is 1
    assert 2 < int(child) < 20


@needs_isolation
async def test_process_count_is_limited() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=5, output_chars=500, processes=4))
    res = await sb.run(
        "import os, time\nn = 0\nkids = []\n"
        "try:\n    for _ in range(50):\n        pid = os.fork()\n        if pid == 0:\n            time.sleep(5)\n            os._exit(0)\n"
        "        kids.append(pid)\nexcept OSError as e:\n    print(len(kids), e.errno)\n"
    )
    assert res.ok, res.stderr
    count, errno = res.stdout.split()
    assert int(count) < 4 and errno == "11"  # EAGAIN


@needs_isolation
async def test_scratch_space_is_limited() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=5, output_chars=500, file_mb=2,
                                     scratch_mb=4))
    res = await sb.run("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (1024 * 1024))")
    assert res.reason == "scratch space limit (4 MB) exceeded"


@needs_isolation
async def test_an_exception_is_reported_with_its_message(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("def f():\n    return 1 / 0\nf()")
    assert res.reason == "ZeroDivisionError: division by zero"
    assert 'File "<sandbox>", line 2, in f' in res.stderr
    assert "sandbox-runtime" not in res.stderr  # the runtime's own frames are hidden


@needs_isolation
async def test_standard_library_works(sandbox: PythonSandbox) -> None:
    res = await sandbox.run(
        "import json, statistics, datetime, decimal, re, csv, io, sqlite3, zoneinfo\n"
        "db = sqlite3.connect('scratch.db'); db.execute('create table t(x)'); db.execute('insert into t values (2.5)')\n"
        "print(json.dumps({'mean': statistics.mean([1, 2, 3, 4]), 'db': db.execute('select x from t').fetchone()[0]}))"
    )
    assert res.ok, res.stderr
    assert res.stdout.strip() == '{"mean": 2.5, "db": 2.5}'


@needs_isolation
async def test_third_party_packages_are_not_there(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("import pydantic")
    assert res.reason == "ModuleNotFoundError: No module named 'pydantic'"


@needs_isolation
async def test_python_tool_reports_limit_as_error() -> None:
    tool = PythonTool(CPU_BOUND)
    result = await tool.run(tool.Args(code="while True: pass"), CTX)
    assert not result.ok
    assert result.error is not None and "CPU limit" in result.error
    assert result.for_agent().startswith("ERROR: CPU limit")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="processes"):
        SandboxLimits(processes=0)


@needs_isolation
async def test_file_size_is_limited() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=3, output_chars=500, file_mb=1))
    res = await sb.run("open('big.bin', 'wb').write(b'x' * (2 * 1024 * 1024))")
    assert res.reason == "file size limit (1 MB) exceeded"


@needs_isolation
async def test_ignoring_sigxcpu_does_not_escape_the_cpu_limit() -> None:
    res = await PythonSandbox(CPU_BOUND).run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
    assert res.reason is not None and "CPU limit (1 s) exceeded" in res.reason


@needs_isolation
async def test_raising_the_limits_from_inside_fails(sandbox: PythonSandbox) -> None:
    res = await sandbox.run(
        "import resource\n"
        "for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE):\n"
        "    try:\n        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n        print('RAISED', r)\n"
        "    except (ValueError, OSError):\n        pass\n"
        "print(resource.getrlimit(resource.RLIMIT_NPROC))"
    )
    assert res.ok, res.stderr
    assert "RAISED" not in res.stdout
    assert res.stdout.strip() == f"({FAST.processes}, {FAST.processes})"
