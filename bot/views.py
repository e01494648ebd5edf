"""Approval buttons that survive a restart.

The buttons are ``DynamicItem``s: their ``custom_id`` carries the approval id
(and the chosen approach), so any process that registered the classes with
``bot.add_dynamic_items`` handles a click on any approval message, however
old. Only a Director may press them; a reject asks for the reason in a modal,
whose submission is recognised by its ``custom_id`` too, so it counts even when
the bot restarted while the form was open.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import reply_error

if TYPE_CHECKING:
    from bot.client import AgencyBot

log = logging.getLogger(__name__)

APPROVE_TEMPLATE = r"ateams:approve:(?P<approval_id>\d+)(?::(?P<choice>\d+))?"
REJECT_TEMPLATE = r"ateams:reject:(?P<approval_id>\d+)"
REJECT_REASON_TEMPLATE = r"ateams:reject-reason:(?P<approval_id>\d+)"
REFUSAL = "Only the Director (the server owner or the Director role) can decide approvals."


async def _director_only(interaction: discord.Interaction) -> bool:
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    if bot.is_director(interaction.user):
        return True
    await interaction.response.send_message(REFUSAL, ephemeral=True)
    return False


async def _remove_buttons(interaction: discord.Interaction) -> None:
    """After a decision, take the buttons off the approval message (it may be a webhook's)."""
    try:
        await interaction.edit_original_response(view=None)
    except discord.HTTPException as e:
        log.info("could not remove the approval buttons: %s", e)


class ApproveButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=APPROVE_TEMPLATE):
    def __init__(self, approval_id: int, choice: int | None = None, *, label: str | None = None,
                 style: discord.ButtonStyle = discord.ButtonStyle.success) -> None:
        custom_id = f"ateams:approve:{approval_id}" + (f":{choice}" if choice is not None else "")
        super().__init__(discord.ui.Button(label=(label or "Approve")[:80], style=style, custom_id=custom_id))
        self.approval_id = approval_id
        self.choice = choice

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> "ApproveButton":
        # item: the message's component with this custom id, a Button (discord.py's signature names any Item)
        choice = match["choice"]
        if not isinstance(item, discord.ui.Button):
            return cls(int(match["approval_id"]), int(choice) if choice else None)
        return cls(int(match["approval_id"]), int(choice) if choice else None, label=item.label, style=item.style)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _director_only(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: AgencyBot = interaction.client  # type: ignore[assignment]
        try:
            await interaction.response.defer()
            result = await bot.service.decide(self.approval_id, True, bot.actor(interaction.user), choice=self.choice)
            await _remove_buttons(interaction)
            await interaction.followup.send(result, ephemeral=True)
        except Exception as e:  # noqa: BLE001 - every error becomes a reply
            await reply_error(interaction, e)


class RejectModal(discord.ui.Modal):
    """The form that asks for a reject's reason. Its submission is handled by :func:`submit_reject_reason`
    (from the bot's ``on_interaction``), not by this object: a process that restarts while the form is
    open has no such object, and the Director's reason must still count."""

    reason: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="What should change?", style=discord.TextStyle.paragraph, min_length=3, max_length=1000,
        placeholder="e.g. use sources from the last two years",
    )

    def __init__(self, approval_id: int) -> None:
        super().__init__(title="Reject", custom_id=f"ateams:reject-reason:{approval_id}", timeout=900)

    async def on_submit(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        return None  # submit_reject_reason answers it, in this process or the next one


def _submitted_value(components: Any) -> str | None:
    """The first text input's value in a modal submission's raw components (rows or labels)."""
    for comp in components or []:
        if not isinstance(comp, dict):
            continue
        if comp.get("type") == 4 and "value" in comp:
            return str(comp["value"])
        inner = _submitted_value(comp.get("components") or ([comp["component"]] if comp.get("component") else []))
        if inner is not None:
            return inner
    return None


async def submit_reject_reason(interaction: discord.Interaction) -> bool:
    """Decide a reject from its reason form; False when ``interaction`` is not such a submission."""
    data: dict[str, Any] = dict(interaction.data or {})
    match = re.fullmatch(REJECT_REASON_TEMPLATE, str(data.get("custom_id", "")))
    if interaction.type is not discord.InteractionType.modal_submit or match is None:
        return False
    bot: AgencyBot = interaction.client  # type: ignore[assignment]
    if not bot.is_director(interaction.user):
        await interaction.response.send_message(REFUSAL, ephemeral=True)
        return True
    try:
        reason = (_submitted_value(data.get("components")) or "").strip()
        await interaction.response.defer()
        result = await bot.service.decide(int(match["approval_id"]), False, bot.actor(interaction.user), reason=reason)
        await _remove_buttons(interaction)
        await interaction.followup.send(result, ephemeral=True)
    except Exception as e:  # noqa: BLE001 - every error becomes a reply
        await reply_error(interaction, e)
    return True


class RejectButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=REJECT_TEMPLATE):
    def __init__(self, approval_id: int, *, label: str = "Reject") -> None:
        super().__init__(discord.ui.Button(label=label[:80], style=discord.ButtonStyle.danger, custom_id=f"ateams:reject:{approval_id}"))
        self.approval_id = approval_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> "RejectButton":
        # item: the message's component with this custom id, a Button (discord.py's signature names any Item)
        label = item.label if isinstance(item, discord.ui.Button) else None
        return cls(int(match["approval_id"]), label=label or "Reject")

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await _director_only(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await interaction.response.send_modal(RejectModal(self.approval_id))
        except Exception as e:  # noqa: BLE001
            await reply_error(interaction, e)


def approval_view(approval_id: int, kind: str, options: list[str]) -> discord.ui.View:
    """Buttons for one approval: one per approach (then Reject), or Approve / Reject."""
    view = discord.ui.View(timeout=None)
    if kind == "approach" and options:
        for i, text in enumerate(options[:20], 1):
            view.add_item(ApproveButton(approval_id, i, label=text, style=discord.ButtonStyle.primary))
        view.add_item(RejectButton(approval_id, label="Reject all"))
    elif kind == "budget" and len(options) == 2:
        view.add_item(ApproveButton(approval_id, label=options[0]))
        view.add_item(RejectButton(approval_id, label=options[1]))
    else:
        view.add_item(ApproveButton(approval_id))
        view.add_item(RejectButton(approval_id))
    return view


DYNAMIC_ITEMS = (ApproveButton, RejectButton)
