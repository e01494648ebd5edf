"""Compose the service from settings: database, models, memory, learning, metrics.

Adapters (the terminal, the Discord bot, tests) call :func:`build_service`;
each optional part plugs in here without the core knowing about it.
"""
from __future__ import annotations

import logging
from typing import Any

from agency.llm.client import ModelSet
from agency.ports import ChatPort
from agency.service import AgencyService
from agency.settings import Settings

log = logging.getLogger(__name__)


async def build_service(settings: Settings, chat: ChatPort | None, *, models: ModelSet | None = None, memory: Any = None) -> AgencyService:
    service = await AgencyService.create(settings, chat, models=models, memory=memory)
    return service
