"""Compose and run the bot: settings -> logging -> service (database, models) -> AgencyBot.

``ateams bot`` calls :func:`main`; ``python -m bot`` does too.
"""
from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import discord

from agency.errors import AgencyError
from agency.logs import configure_logging
from agency.settings import Settings

log = logging.getLogger(__name__)

NO_TOKEN = ("DISCORD_TOKEN is not set. Create a bot in the Discord developer portal "
            "(https://discord.com/developers/applications), copy its token and run: DISCORD_TOKEN=... ateams bot "
            "(see docs/discord.md).")
BAD_TOKEN = ("Discord refused the token in DISCORD_TOKEN: it is invalid or was reset. Copy a fresh one from the "
             "Bot page of your application in the developer portal.")
NO_INTENTS = ("Discord refused the connection: enable the privileged gateway intents SERVER MEMBERS and MESSAGE CONTENT "
              "on the Bot page of your application in the developer portal.")


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def create_bot(settings: Settings, **options: object):  # noqa: ANN201
    """Build the service and the bot around one DiscordChat."""
    from agency.wiring import build_service
    from bot.client import AgencyBot
    from bot.discord_chat import DiscordChat

    chat = DiscordChat(settings)
    service = await build_service(settings, chat)
    return AgencyBot(settings, service, chat, **options)  # type: ignore[arg-type]


async def run(settings: Settings, token: str) -> None:
    import signal

    from agency.wiring import tune_gc

    bot = await create_bot(settings)
    if bot.service.llm.simulated:
        log.warning("no model endpoint or key is configured: every project is a dry run with simulated roles")
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def stop(sig: signal.Signals) -> None:  # graceful: stop scheduling, finish writes, drain the outbox, log out
        if not closing:
            log.info("%s received: shutting down", sig.name)
            closing.append(asyncio.create_task(bot.close()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, or not the main thread
            pass
    tune_gc()  # start-up objects never need collecting; full collections were the longest loop pauses
    try:
        async with bot:
            await bot.start(token)
    finally:
        await bot.service.db.dispose()


def main(settings: Settings) -> int:
    """Run the bot until it is stopped; return the process exit code."""
    configure_logging(settings.log_level)
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        _say(NO_TOKEN)
        return 2
    try:
        asyncio.run(run(settings, token))
    except discord.LoginFailure:
        _say(BAD_TOKEN)
        return 1
    except discord.PrivilegedIntentsRequired:
        _say(NO_INTENTS)
        return 1
    except (aiohttp.ClientConnectionError, OSError) as e:
        _say(f"Could not reach Discord ({type(e).__name__}: {e}). Check the network and try again; "
             "projects resume where they stopped.")
        return 1
    except AgencyError as e:
        _say(e.user_message)
        return 1
    except KeyboardInterrupt:
        _say("Stopped. Running projects resume on the next start.")
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    from agency.settings import load_settings

    try:
        _settings = load_settings()
    except AgencyError as e:
        _say(e.user_message)
        sys.exit(2)
    sys.exit(main(_settings))
