import subprocess
import sys


def test_agency_never_imports_discord() -> None:
    code = (
        "import sys, agency, agency.service, agency.engine, agency.console, agency.cli, agency.wiring, agency.memory\n"
        "assert 'discord' not in sys.modules, [m for m in sys.modules if m.startswith('discord')]\n"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_no_source_file_in_agency_imports_discord() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "agency"
    offenders = [
        str(p) for p in root.rglob("*.py")
        if any(line.strip().startswith(("import discord", "from discord")) for line in p.read_text().splitlines())
    ]
    assert offenders == []
