"""Helpers shared by the cogs: where a command was typed, and autocomplete."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from agency.errors import AgencyError
from bot.text import split_message

if TYPE_CHECKING:
    from bot.client import AgencyBot


def agency_id(interaction: discord.Interaction) -> str:
    if interaction.guild is None:
        raise app_commands.NoPrivateMessage()
    return str(interaction.guild.id)


async def address_here(interaction: discord.Interaction) -> str | None:
    """The core's address of the channel or thread the command was used in."""
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    channel = interaction.channel
    if interaction.guild is None or channel is None or not isinstance(channel, (discord.abc.GuildChannel, discord.Thread)):
        return None
    return await bot.chat.address_of(interaction.guild.id, channel)


async def project_here(interaction: discord.Interaction, project: int | None) -> int:
    """The project a command means: given, the one of this channel, or the latest active one."""
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    return await bot.service.resolve_project(agency_id(interaction), project, await address_here(interaction))


async def project_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    if interaction.guild is None:
        return []
    try:
        projects = await bot.service.projects(str(interaction.guild.id))
    except AgencyError:
        return []
    current = current.lower().lstrip("#")
    out = []
    for p in projects:
        name = f"#{p.id} [{p.status}] {p.objective}"
        if current and current not in name.lower():
            continue
        out.append(app_commands.Choice(name=name[:100], value=p.id))
    return out[:25]


async def handle_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    if interaction.guild is None:
        return []
    try:
        members = await bot.service.members(str(interaction.guild.id), kinds=("specialist", "human", "collaborator", "pm"))
    except AgencyError:
        return []
    current = current.lower().lstrip("@")
    return [app_commands.Choice(name=f"@{m.handle} ({m.role})"[:100], value=m.handle)
            for m in members if not current or current in m.handle.lower()][:25]


async def answer(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
    """Answer a deferred interaction through the followup, split to Discord's limit."""
    parts = split_message(text) or ["Done."]
    for part in parts:
        await interaction.followup.send(part, ephemeral=ephemeral, allowed_mentions=discord.AllowedMentions.none())
