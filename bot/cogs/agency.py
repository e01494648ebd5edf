"""`/agency setup`: the server becomes an agency with an #hq channel and a Director role."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from agency.ports import SpaceSpec
from bot.checks import server_manager_only
from bot.context import answer
from bot.permissions import DiscordPermissionError, missing_in

if TYPE_CHECKING:
    from bot.client import AgencyBot

log = logging.getLogger(__name__)


class AgencySetup(commands.Cog):
    agency = app_commands.Group(name="agency", description="Set up this server as an A-TEAMs agency.", guild_only=True)

    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    async def _director_role(self, guild: discord.Guild) -> tuple[discord.Role, bool]:
        role = self.bot.director_role(guild)
        if role is not None:
            return role, False
        me = guild.me
        if not (me.guild_permissions.manage_roles or me.guild_permissions.administrator):
            raise DiscordPermissionError("manage_roles")
        try:
            # not mentionable: only the bot pings it (with Mention Everyone, restricted by allowed-mentions to this role)
            role = await guild.create_role(name=self.bot.settings.discord.director_role, mentionable=False,
                                           reason="A-TEAMs: who may direct the agency")
        except discord.Forbidden as e:
            raise DiscordPermissionError("manage_roles") from e
        return role, True

    @agency.command(name="setup")
    @server_manager_only()
    async def setup_agency(self, interaction: discord.Interaction) -> None:
        """Create #hq and the Director role if missing, and record them (safe to run again)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild = interaction.guild
        assert guild is not None
        gid = str(guild.id)
        service = self.bot.service
        await service.ensure_agency(gid, guild.name)
        role, role_created = await self._director_role(guild)
        await service.set_director_role(gid, str(role.id))
        self.bot.director_role_ids[guild.id] = role.id
        before = await service.space_external_id(gid, "hq")
        hq_name = self.bot.settings.discord.hq_channel
        hq_id = await self.bot.chat.ensure_space(SpaceSpec(address="hq", kind="hq", name=hq_name, topic="Director <-> PM, agency-wide news",
                                                           agency_external_id=gid))
        await service.record_space(gid, "hq", hq_id, kind="hq", name=hq_name)
        lines = [f"**{guild.name}** is an A-TEAMs agency."]
        lines.append(f"{'Created' if role_created else 'Using'} the {role.mention} role: the server owner and its members direct the agency.")
        lines.append(f"{'Created' if before != hq_id else 'Using'} <#{hq_id}> for news and talking with the PM.")
        hq = guild.get_channel(int(hq_id))
        missing = missing_in(hq) if hq is not None else []
        if missing:
            lines.append(DiscordPermissionError(missing).user_message)
        lines.append("Start a project with `/project new`.")
        await answer(interaction, "\n".join(lines))
        if before != hq_id and isinstance(hq, discord.TextChannel) and not missing_in(hq, "send_messages"):
            await hq.send("Welcome to the agency. Directors start projects with `/project new`; each project gets a category with "
                          "`#overview`, a channel per work stream and a thread per specialist.")
        log.info("agency set up in guild %s (role %s, hq %s)", guild.id, role.id, hq_id)


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(AgencySetup(bot))
