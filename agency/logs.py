"""Logging: structlog over the standard library; JSON when not on a terminal.

Secrets are redacted from every record (values of known secret settings and
anything shaped like an API key or a Discord token)."""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"[MN][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"),  # Discord bot token
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{12,}"),
]
_SECRET_ENV = ("OPENAI_API_KEY", "DISCORD_TOKEN")


def redact(text: str) -> str:
    """Remove secrets from text meant for logs, chat or exports."""
    if not text:
        return text
    for name in _SECRET_ENV:
        v = os.environ.get(name)
        if v and len(v) >= 6:
            text = text.replace(v, "[REDACTED]")
    for p in _PATTERNS:
        text = p.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for k, v in list(event_dict.items()):
        if isinstance(v, str):
            event_dict[k] = redact(v)
    return event_dict


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not (hasattr(stream, "isatty") and stream.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "openai", "discord.gateway", "chromadb", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level) if isinstance(logging.getLevelName(level), int) else logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
