"""`ateams bot`: composition, clear messages for a missing or refused token; the core never imports discord."""
from __future__ import annotations

import subprocess
import sys

import discord
import pytest
from typer.testing import CliRunner

import bot.__main__ as entry
from agency.settings import load_settings
from bot.client import AgencyBot, intents


@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch):
    monkeypatch.setattr(entry, "configure_logging", lambda *a, **k: None)  # keep pytest's log capture


def test_missing_token_is_a_clear_message(settings, capsys):
    assert entry.main(settings) == 2
    err = capsys.readouterr().err
    assert "DISCORD_TOKEN is not set" in err and "Traceback" not in err


def test_ateams_bot_without_a_token(tmp_path, monkeypatch):
    from agency.cli import app

    monkeypatch.setenv("ATEAMS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(app, ["bot"])
    assert result.exit_code == 2
    assert "DISCORD_TOKEN is not set" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("error,expected,code", [
    (discord.LoginFailure("Improper token has been passed."), "Discord refused the token", 1),
    (discord.PrivilegedIntentsRequired(None), "MESSAGE CONTENT", 1),
    (OSError("Network is unreachable"), "Could not reach Discord", 1),
])
def test_refused_token_or_connection_is_a_clear_message(tmp_path, monkeypatch, capsys, error, expected, code):
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-real-token")
    settings = load_settings(data_dir=tmp_path / "data")
    started = []

    async def fake_start(self, token, *, reconnect=True):
        started.append((token, self.intents.members, self.intents.message_content))
        raise error

    monkeypatch.setattr(AgencyBot, "start", fake_start)
    assert entry.main(settings) == code
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert started == [("not-a-real-token", True, True)]


def test_intents():
    i = intents()
    assert i.guilds and i.members and i.message_content and i.guild_messages


async def test_create_bot_composes_the_service_and_the_chat(settings):
    bot = await entry.create_bot(settings, sync_commands=False)
    try:
        assert bot.chat.bot is bot and bot.chat.store is bot.service
        assert bot.service.chat is bot.chat
    finally:
        await bot.service.close()
        await bot.http.close()


def test_the_core_never_imports_discord():
    code = (
        "import importlib, pkgutil, sys, agency\n"
        "for m in pkgutil.walk_packages(agency.__path__, 'agency.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'discord' or n.startswith('discord.') or n == 'bot' or n.startswith('bot.'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
