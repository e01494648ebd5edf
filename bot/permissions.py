"""The Discord permissions the bot needs, and errors that name a missing one."""
from __future__ import annotations

import discord

from agency.errors import AgencyError

# permission attribute -> (label shown in Discord's UI, what it is needed for)
NEEDED: dict[str, tuple[str, str]] = {
    "view_channel": ("View Channels", "see the project channels"),
    "send_messages": ("Send Messages", "post in channels"),
    "send_messages_in_threads": ("Send Messages in Threads", "post in specialists' threads"),
    "embed_links": ("Embed Links", "post embeds"),
    "attach_files": ("Attach Files", "attach deliverables"),
    "read_message_history": ("Read Message History", "read the conversation"),
    "manage_channels": ("Manage Channels", "create a category and channels for each project"),
    "manage_threads": ("Manage Threads", "reopen archived threads"),
    "create_public_threads": ("Create Public Threads", "create a thread for each specialist"),
    "manage_webhooks": ("Manage Webhooks", "let each member speak with its own name and avatar"),
    "manage_roles": ("Manage Roles", "create the Director role"),
    "mention_everyone": ("Mention @everyone, @here and All Roles", "ping the Director role, which nobody else can mention"),
}

INVITE_SCOPES = ("bot", "applications.commands")


def needed_permissions() -> discord.Permissions:
    return discord.Permissions(**{name: True for name in NEEDED})


def label(permission: str) -> str:
    return NEEDED.get(permission, (permission.replace("_", " ").title(), ""))[0]


def missing_in(channel: discord.abc.GuildChannel | discord.Thread | None, *only: str) -> list[str]:
    """The needed permissions the bot lacks in ``channel`` (or in the guild for None)."""
    if channel is None:
        return []
    guild = channel.guild
    me = guild.me
    perms = channel.permissions_for(me) if me is not None else discord.Permissions.none()
    if perms.administrator:
        return []
    names = only or tuple(NEEDED)
    return [n for n in names if not getattr(perms, n, False)]


class DiscordPermissionError(AgencyError):
    """Discord refused an action because the bot lacks a permission; the message names it."""

    def __init__(self, permissions: list[str] | str, where: str = "") -> None:
        perms = [permissions] if isinstance(permissions, str) else list(permissions)
        self.permissions = perms
        names = ", ".join(f"**{label(p)}**" for p in perms) or "a permission"
        why = "; ".join(NEEDED[p][1] for p in perms if p in NEEDED)
        super().__init__(f"I am missing the {names} permission{'s' if len(perms) > 1 else ''}"
                         f"{' in ' + where if where else ''}" + (f" (needed to {why})." if why else ".")
                         + " Ask a server admin to grant it to my role.")
