"""Fixtures for the Discord adapter tests: nothing reaches Discord, unexpected errors fail the test."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord.webhook.async_ import AsyncWebhookAdapter

from agency.settings import Settings
from bot_harness import Harness, start_harness, stop_harness


class NetworkBlockedError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_discord_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reaches Discord or any other host: webhooks and HTTP refuse, only 127.0.0.1 is allowed
    (on top of the socket guard of tests/conftest.py)."""

    async def refuse_webhook(self: Any, route: Any, *args: Any, **kwargs: Any) -> Any:
        raise NetworkBlockedError(f"test tried to reach Discord: {route.method} {route.url}")

    async def refuse_http(self: Any, route: Any, *args: Any, **kwargs: Any) -> Any:
        raise NetworkBlockedError(f"test tried to reach Discord: {getattr(route, 'method', '?')} {getattr(route, 'url', route)}")

    orig_request = aiohttp.ClientSession._request

    async def local_only(self: Any, method: str, str_or_url: Any, *args: Any, **kwargs: Any) -> Any:
        host = aiohttp.client.URL(str(str_or_url)).host
        if host not in ("127.0.0.1", "localhost"):
            raise NetworkBlockedError(f"test tried to reach {host}")
        return await orig_request(self, method, str_or_url, *args, **kwargs)

    monkeypatch.setattr(AsyncWebhookAdapter, "request", refuse_webhook)  # dpytest_compat.install puts the fake in
    monkeypatch.setattr(discord.http.HTTPClient, "request", refuse_http)
    monkeypatch.setattr(aiohttp.ClientSession, "_request", local_only)
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "no-config.toml"))
    for var in ("DISCORD_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # dpytest may write files to the working directory


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_errors: the test expects errors in the log")


@pytest.fixture(autouse=True)
def no_unexpected_errors(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose bot, core or discord.py logged an error it did not expect (e.g. a crashed listener)."""
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("allow_errors") is None:
        bad = [r for r in caplog.get_records("call") + caplog.get_records("teardown")
               if r.levelno >= logging.ERROR and r.name.startswith(("bot", "agency", "discord"))]
        assert not bad, "unexpected errors logged:\n" + "\n".join(f"{r.name}: {r.getMessage()}" for r in bad)


@pytest.fixture
async def harness(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """A bot on the fake Discord (settings: the temporary database of tests/conftest.py)."""
    h = await start_harness(settings, monkeypatch)
    try:
        yield h
    finally:
        await stop_harness(h)
