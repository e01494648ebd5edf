"""The python sandbox: limits, isolation, output (acceptance: runaway loop,
memory bomb and network call each stopped)."""
from __future__ import annotations

import os
import socket
import tempfile
import threading

import pytest

from agency.tools import PythonSandbox, PythonTool, SandboxLimits, ToolContext, network_namespace_available

FAST = SandboxLimits(cpu_seconds=1, memory_mb=128, wall_seconds=3, output_chars=500)
CTX = ToolContext(agency_id=1, member="Analyst-A", role="specialist", project_id=7)


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
def listener():
    lst = Listener()
    yield lst
    lst.close()


async def test_listener_is_reachable_from_the_test_process(listener: Listener) -> None:
    # the control: the port really is open outside the sandbox
    with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
        pass
    for _ in range(20):
        if listener.accepted:
            break
        threading.Event().wait(0.05)
    assert listener.accepted == 1


async def test_normal_code_prints_its_result(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("print(sum(range(10)))\n2 ** 10")
    assert res.ok, res.stderr
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["45", "1024"]


async def test_runaway_loop_is_stopped_by_the_cpu_limit(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("while True:\n    pass")
    assert not res.ok
    assert res.reason is not None and "CPU limit (1 s) exceeded" in res.reason
    assert res.duration_ms < 3000


async def test_sleeping_code_is_stopped_by_the_wall_clock_limit() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=5, memory_mb=128, wall_seconds=1, output_chars=500))
    res = await sb.run("import time\nprint('started', flush=True)\ntime.sleep(30)")
    assert res.reason == "time limit (1 s) exceeded; the process was stopped"
    assert res.stdout.startswith("started")
    assert res.duration_ms < 2500


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


@pytest.mark.parametrize("template", [CONNECT_LOOPBACK, CONNECT_RAW, CONNECT_EXTERNAL, RESOLVE_EXTERNAL],
                         ids=["loopback", "raw-socket", "external-url", "dns"])
async def test_network_call_is_stopped(sandbox: PythonSandbox, listener: Listener, template: str) -> None:
    res = await sandbox.run(template.format(port=listener.port))
    assert not res.ok
    assert res.reason == "network is disabled in the sandbox"
    assert "CONNECTED" not in res.stdout
    assert listener.accepted == 0


@pytest.mark.parametrize("template", [CONNECT_LOOPBACK, CONNECT_RAW, CONNECT_EXTERNAL],
                         ids=["loopback", "raw-socket", "external-url"])
async def test_network_is_blocked_in_process_without_a_namespace(listener: Listener, template: str) -> None:
    sb = PythonSandbox(FAST, use_netns=False)
    res = await sb.run(template.format(port=listener.port))
    assert not res.network_isolated
    assert res.reason == "network is disabled in the sandbox"
    assert "PermissionError: network is disabled in the sandbox" in res.stderr or "network is disabled" in res.stderr
    assert listener.accepted == 0


@pytest.mark.parametrize("template", [CONNECT_LOOPBACK, CONNECT_RAW, RESOLVE_EXTERNAL],
                         ids=["loopback", "raw-socket", "dns"])
async def test_network_namespace_alone_stops_even_loopback(listener: Listener, template: str) -> None:
    if not await network_namespace_available():
        pytest.skip("unshare -rn is not available here")
    sb = PythonSandbox(FAST, guard=False)  # no audit hook: only the kernel stands in the way
    res = await sb.run(template.format(port=listener.port))
    assert res.network_isolated
    assert "CONNECTED" not in res.stdout
    assert res.reason == "network is disabled in the sandbox"
    assert listener.accepted == 0


async def test_output_is_capped_and_a_flood_is_stopped(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("while True:\n    print('x' * 100)")
    assert res.truncated
    assert res.reason == "output limit (500 characters) exceeded; the process was stopped"
    assert len(res.stdout) <= 500 * 4 + 1024


async def test_long_output_is_truncated_for_the_agent() -> None:
    tool = PythonTool(FAST)
    result = await tool.run(tool.Args(code="print('y' * 3000)\nprint('END')"), CTX)
    assert result.ok
    assert result.truncated
    assert len(result.output) <= 500
    assert "characters cut" in result.output
    assert result.output.rstrip().endswith("END")  # the tail is kept


async def test_working_directory_is_empty_and_temporary(sandbox: PythonSandbox) -> None:
    code = (
        "import os\n"
        "print(os.listdir('.'))\n"
        "print(os.getcwd())\n"
        "open('scratch.txt', 'w').write('hello')\n"
        "print(open('scratch.txt').read())\n"
    )
    res = await sandbox.run(code)
    assert res.ok, res.stderr
    listing, cwd, content = res.stdout.splitlines()
    assert listing == "[]"
    assert content == "hello"
    assert os.path.basename(cwd).startswith("ateams-py-")
    assert os.path.realpath(os.path.dirname(cwd)) == os.path.realpath(tempfile.gettempdir())
    assert not os.path.exists(cwd)  # removed after the run

    second = await sandbox.run("import os\nprint(os.listdir('.'))")
    assert second.stdout.strip() == "[]"  # nothing persists between runs


async def test_environment_has_no_secrets(sandbox: PythonSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token-not-for-the-sandbox")
    res = await sandbox.run("import os\nprint(sorted(os.environ))\nprint(dict(os.environ))")
    assert res.ok, res.stderr
    assert "OPENAI_API_KEY" not in res.stdout
    assert "DISCORD_TOKEN" not in res.stdout
    assert "not-for-the-sandbox" not in res.stdout
    assert "PATH" in res.stdout


async def test_files_outside_the_sandbox_cannot_be_read_or_written(sandbox: PythonSandbox, tmp_path) -> None:
    secret = tmp_path / ".env"
    secret.write_text("DISCORD_TOKEN=very-secret\n")
    res = await sandbox.run(f"print(open({str(secret)!r}).read())")
    assert not res.ok
    assert "very-secret" not in res.stdout
    assert res.reason is not None and "reading outside the sandbox directory is not allowed" in res.reason

    target = tmp_path / "written.txt"
    res = await sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert res.reason is not None and "writing outside the sandbox directory is not allowed" in res.reason
    assert not target.exists()

    res = await sandbox.run(f"print(open('../../../../../../../..{str(secret)}').read())")
    assert "very-secret" not in res.stdout and not res.ok


async def test_starting_processes_is_blocked(sandbox: PythonSandbox) -> None:
    for code in ("import os\nos.system('echo hi')", "import subprocess\nsubprocess.run(['echo', 'hi'])", "import os\nos.fork()"):
        res = await sandbox.run(code)
        assert not res.ok
        assert res.reason is not None and "starting processes is disabled in the sandbox" in res.reason, code


async def test_an_exception_is_reported_with_its_message(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("def f():\n    return 1 / 0\nf()")
    assert res.reason == "ZeroDivisionError: division by zero"
    assert 'File "<sandbox>", line 2, in f' in res.stderr
    assert "sandbox-runtime" not in res.stderr  # the runtime's own frames are hidden


async def test_standard_library_works(sandbox: PythonSandbox) -> None:
    res = await sandbox.run(
        "import json, statistics, datetime, decimal, re, csv, io\n"
        "print(json.dumps({'mean': statistics.mean([1, 2, 3, 4])}))"
    )
    assert res.ok, res.stderr
    assert res.stdout.strip() == '{"mean": 2.5}'


async def test_python_tool_reports_limit_as_error() -> None:
    tool = PythonTool(FAST)
    result = await tool.run(tool.Args(code="while True: pass"), CTX)
    assert not result.ok
    assert result.error is not None and "CPU limit" in result.error
    assert result.for_agent().startswith("ERROR: CPU limit")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)


async def test_file_size_is_limited() -> None:
    sb = PythonSandbox(SandboxLimits(cpu_seconds=2, memory_mb=128, wall_seconds=3, output_chars=500, file_mb=1))
    res = await sb.run("open('big.bin', 'wb').write(b'x' * (2 * 1024 * 1024))")
    assert res.reason == "file size limit (1 MB) exceeded"


async def test_ignoring_sigxcpu_does_not_escape_the_cpu_limit(sandbox: PythonSandbox) -> None:
    res = await sandbox.run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
    assert res.reason is not None and "CPU limit (1 s) exceeded" in res.reason
