"""Shims that make dpytest 0.7.0 usable with discord.py 2.7 for a project/agency bot.

Adapted from ../shared/reference/dpytest_compat.py (pinned: discord.py 2.7.1, dpytest 0.7.0; it
touches private internals). Additions for A-TEAMs: webhook message edits, attachments recorded in
memory (dpytest writes files to the working directory), component messages updated by deferred
component responses, modal submission, dynamic-item tasks drained, and moving the fake Discord
onto a second bot (a restart).

Every patch goes through pytest's ``monkeypatch`` so it is undone after each test.

Fixes (dpytest bugs against discord.py 2.7):
  * FakeState.loop is MISSING            -> ``async with channel.typing()`` crashes
  * dict_from_channel puts the enum in 'type' -> objects *returned* by create_text_channel
    are typed ``news``; ``delete()`` on them is a silent no-op; fetch_channel raises InvalidData
  * dict_from_overwrite writes type 'role'/'member' (strings) -> role overwrites are ignored
    by permissions_for()
  * dict_from_message puts the enum in 'type' -> ``MessageType.unknown_...`` on send() results
  * messages have no ``components`` attribute (dpytest never sets the key)
  * Guild.create_role / Role.edit send 'colors'  -> TypeError in dpytest's make_role
  * reaction-add payload lacks 'type'           -> KeyError in discord.py 2.7
Adds (not simulated by dpytest at all):
  * TextChannel.edit, Guild.fetch_channels
  * threads: TextChannel.create_thread / Message.create_thread (+ THREAD_CREATE into the cache)
  * webhooks: create_webhook / webhooks() and a fake webhook adapter for Webhook.send
    (also guarantees no test ever reaches discord.com through a webhook or interaction)
  * interactions: invoke_slash() for app_commands, click() for discord.ui buttons
  * optional STRICT 2000-char content limit (real Discord answers 400 / code 50035)
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any

import discord
from discord.ext import test as dpytest
from discord.ext.test import backend as back
from discord.ext.test import callbacks
from discord.ext.test import factories as facts
from discord.webhook.async_ import AsyncWebhookAdapter

MAX_CONTENT = 2000


class Recorder:
    """What went out through webhooks / interaction responses during one test."""

    def __init__(self) -> None:
        self.webhook_sends: list[dict[str, Any]] = []
        self.interaction_responses: list[dict[str, Any]] = []
        self.app_errors: list[BaseException] = []
        self.view_errors: list[BaseException] = []
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.webhook_edits: list[dict[str, Any]] = []
        self.modals: list[dict[str, Any]] = []
        self.interactions: dict[str, dict[str, Any]] = {}
        self.strict_limits = True
        self.files: list[dict[str, Any]] = []  # {"channel_id", "message_id", "filename", "text"}


REC = Recorder()


def _iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _state() -> Any:
    return back.get_state()


def _find_channel(channel_id: int) -> Any:
    for guild in _state().guilds:
        ch = guild.get_channel_or_thread(int(channel_id))
        if ch is not None:
            return ch
    raise discord.NotFound(back.FakeRequest(404, "Not Found"), "Unknown Channel")


def _too_long(payload: dict | None) -> None:
    if REC.strict_limits and payload and len(payload.get("content") or "") > MAX_CONTENT:
        raise discord.HTTPException(
            back.FakeRequest(400, "Bad Request"),
            {"code": 50035, "message": "Invalid Form Body: content: Must be 2000 or fewer in length."},
        )


def _raw_messages(channel_id: int) -> list[dict]:
    return back._cur_config.messages.setdefault(int(channel_id), [])


def _raw_message(channel_id: int, message_id: int) -> dict | None:
    return next((m for m in _raw_messages(channel_id) if int(m["id"]) == int(message_id)), None)


def _message_dict(target: Any, author: dict, payload: dict, **extra: Any) -> dict:
    mid = facts.make_id()
    data = {
        "id": mid, "channel_id": target.id, "guild_id": target.guild.id, "author": author,
        "content": payload.get("content") or "", "timestamp": discord.utils.snowflake_time(mid).isoformat(),
        "edited_timestamp": None, "tts": False, "mention_everyone": False,
        "mentions": [facts.dict_from_user(m) for m in back.find_user_mentions(payload.get("content"), target.guild)],
        "mention_roles": back.find_role_mentions(payload.get("content"), target.guild),
        "attachments": [], "embeds": payload.get("embeds") or [], "components": payload.get("components") or [],
        "pinned": False, "type": 0, "flags": payload.get("flags", 0),
    }
    data.update(extra)
    return data


def _attachments(files: Any, channel_id: int, message_id: int) -> list[dict]:
    out = []
    for f in files or []:
        fp = f.fp
        if fp.seekable():
            fp.seek(0)
        raw = fp.read()
        REC.files.append({"channel_id": channel_id, "message_id": message_id, "filename": f.filename,
                          "text": raw.decode("utf-8", errors="replace")})
        out.append({"id": facts.make_id(), "filename": f.filename, "size": len(raw),
                    "url": f"https://cdn.invalid/{f.filename}", "proxy_url": f"https://cdn.invalid/{f.filename}",
                    "content_type": "text/markdown"})
    return out


def _publish(target: Any, data: dict) -> discord.Message:
    """Push a message through the gateway path (on_message fires) and keep it for history()."""
    _state().parse_message_create(data)
    _raw_messages(target.id).append(data)
    return _state()._get_message(data["id"])


# ----------------------------------------------------------------------------- FakeHttp additions
async def _create_role(self, guild_id, *, reason=None, **fields):
    guild = self.state._get_guild(int(guild_id))
    colors = fields.get("colors") or {}
    role = back.make_role(
        name=fields.get("name", "new role"), guild=guild, colour=colors.get("primary_color", 0),
        permissions=int(fields.get("permissions", 0)), hoist=fields.get("hoist", False),
        mentionable=fields.get("mentionable", False),
    )
    await callbacks.dispatch_event("create_role", guild, role, reason=reason)
    return facts.dict_from_role(role)


async def _edit_role(self, guild_id, role_id, *, reason=None, **fields):
    role = self.state._get_guild(int(guild_id)).get_role(int(role_id))
    colors = fields.get("colors") or {}
    back.update_role(
        role, colour=colors.get("primary_color"), name=fields.get("name"), hoist=fields.get("hoist"),
        mentionable=fields.get("mentionable"),
        permissions=int(fields["permissions"]) if "permissions" in fields else None,
    )
    return facts.dict_from_role(role)


async def _edit_channel(self, channel_id, *, reason=None, **options):
    ch = _find_channel(channel_id)
    if isinstance(ch, discord.Thread):
        data = _thread_payload(ch.parent, ch.name, thread_id=ch.id, type_=ch.type.value, owner_id=ch.owner_id)
        data["thread_metadata"].update(
            {k: options[k] for k in ("archived", "locked", "auto_archive_duration", "invitable") if k in options})
        if "name" in options:
            data["name"] = options["name"]
        self.state.parse_thread_update(data)
        return data
    data = facts.dict_from_channel(ch)
    data.update({k: v for k, v in options.items() if v is not discord.utils.MISSING})
    self.state.parse_channel_update(data)
    return facts.dict_from_channel(ch)


async def _get_all_guild_channels(self, guild_id):
    guild = self.state._get_guild(int(guild_id))
    return [facts.dict_from_channel(c) for c in guild.channels]


def _thread_payload(parent, name, *, thread_id=None, type_=11, owner_id=0, auto_archive_duration=1440,
                    invitable=True) -> dict:
    return {
        "id": thread_id or facts.make_id(), "guild_id": parent.guild.id, "parent_id": parent.id,
        "owner_id": owner_id, "name": name, "type": type_, "last_message_id": None, "message_count": 0,
        "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": auto_archive_duration,
                            "archive_timestamp": _iso(), "locked": False, "invitable": invitable,
                            "create_timestamp": _iso()},
    }


async def _start_thread_without_message(self, channel_id, *, name, auto_archive_duration, type, invitable=True,
                                        rate_limit_per_user=None, reason=None):
    parent = _find_channel(channel_id)
    data = _thread_payload(parent, name, type_=type, owner_id=self.state.user.id,
                           auto_archive_duration=auto_archive_duration, invitable=invitable)
    self.state.parse_thread_create({**data, "newly_created": True})
    return data


async def _start_thread_with_message(self, channel_id, message_id, *, name, auto_archive_duration,
                                     rate_limit_per_user=None, reason=None):
    parent = _find_channel(channel_id)
    data = _thread_payload(parent, name, thread_id=int(message_id), owner_id=self.state.user.id,
                           auto_archive_duration=auto_archive_duration)
    self.state.parse_thread_create({**data, "newly_created": True})
    return data


async def _create_webhook(self, channel_id, *, name, avatar=None, reason=None):
    ch = _find_channel(channel_id)
    perms = ch.permissions_for(ch.guild.me)
    if not (perms.manage_webhooks or perms.administrator):
        raise discord.Forbidden(back.FakeRequest(403, "Forbidden"), "missing manage_webhooks")
    wid = facts.make_id()
    data = {"id": wid, "type": 1, "guild_id": ch.guild.id, "channel_id": ch.id, "name": name, "avatar": None,
            "token": f"token-{wid}", "application_id": None, "user": facts.dict_from_user(self.state.user)}
    REC.webhooks[wid] = data
    return data


async def _channel_webhooks(self, channel_id):
    return [w for w in REC.webhooks.values() if w["channel_id"] == int(channel_id)]


async def _guild_webhooks(self, guild_id):
    return [w for w in REC.webhooks.values() if w["guild_id"] == int(guild_id)]


def _wrap_send_message(orig):
    async def send_message(self, channel_id, *, params):
        channel = sys._getframe(1).f_locals.get("channel")  # noqa: F841  (dpytest reads caller locals)
        _too_long(params.payload)
        files = params.files
        if files:  # keep attachments in memory; dpytest would write them to the working directory
            params = params._replace(files=None)
        result = await orig(self, channel_id, params=params)
        raw = _raw_message(channel_id, result["id"])
        if files:
            raw["attachments"] = _attachments(files, int(channel_id), int(result["id"]))
            msg = self.state._get_message(int(result["id"]))
            if msg is not None:
                msg.attachments = [discord.Attachment(data=a, state=self.state) for a in raw["attachments"]]
        comps = (params.payload or {}).get("components") or []
        raw["components"] = comps
        msg = self.state._get_message(int(result["id"]))
        if msg is not None:
            msg._handle_components(comps)
        return dict(raw)
    return send_message


# ----------------------------------------------------------------------------- webhook / interaction adapter
async def _adapter_request(self, route, session=None, *, payload=None, multipart=None, proxy=None, proxy_auth=None,
                           files=None, reason=None, auth_token=None, params=None):
    if payload is None and multipart:
        payload = json.loads(multipart[0]["value"])  # payload_json part
    payload = payload or {}
    params = params or {}
    path, method = route.path, route.method
    wid = int(route.webhook_id) if route.webhook_id else None
    token = route.webhook_token
    if method == "POST" and path.endswith("/callback"):
        return _interaction_callback(wid, token, payload)
    if token in REC.interactions:
        return _interaction_webhook(method, path, token, payload, route)
    if method == "POST" and path == "/webhooks/{webhook_id}/{webhook_token}":
        return _execute_webhook(wid, token, payload, params, files)
    if path == "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}":
        return _webhook_message(method, wid, token, _url_message_id(route), payload, params, route)
    if method == "DELETE" and path.startswith("/webhooks/{webhook_id}"):
        REC.webhooks.pop(wid, None)
        return None
    raise NotImplementedError(f"fake webhook adapter: {method} {path}")


def _url_message_id(route) -> int:
    return int(route.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1])


def _hook_or_404(wid: int, token: str) -> dict:
    hook = REC.webhooks.get(wid)
    if hook is None or hook["token"] != token:
        raise discord.NotFound(back.FakeRequest(404, "Not Found"), {"code": 10015, "message": "Unknown Webhook"})
    return hook


def _webhook_message(method: str, wid: int, token: str, message_id: int, payload: dict, params: dict, route) -> dict | None:
    hook = _hook_or_404(wid, token)
    channel_id = int(params.get("thread_id") or hook["channel_id"])
    raw = _raw_message(channel_id, message_id)
    if raw is None or raw.get("webhook_id") != wid:
        raise discord.NotFound(back.FakeRequest(404, "Not Found"), {"code": 10008, "message": "Unknown Message"})
    if method == "PATCH":
        _too_long(payload)
        raw.update({k: payload[k] for k in ("content", "embeds", "components") if k in payload})
        raw["edited_timestamp"] = _iso()
        REC.webhook_edits.append({"webhook_id": wid, "message_id": message_id, "content": raw["content"]})
        _state().parse_message_update(dict(raw))
        return dict(raw)
    if method == "GET":
        return dict(raw)
    if method == "DELETE":
        _raw_messages(channel_id).remove(raw)
        return None
    raise NotImplementedError(f"fake webhook adapter: {method} webhook message")


def _execute_webhook(wid: int, token: str, payload: dict, params: dict, files: Any = None):
    hook = _hook_or_404(wid, token)
    _too_long(payload)
    channel = _find_channel(hook["channel_id"])
    target = channel
    if params.get("thread_id"):
        target = channel.guild.get_thread(int(params["thread_id"]))
        if target is None or target.parent_id != channel.id:
            raise discord.NotFound(back.FakeRequest(404, "Not Found"), {"code": 10003, "message": "Unknown Channel"})
    author = {"id": wid, "username": payload.get("username") or hook["name"], "discriminator": "0000",
              "avatar": None, "bot": True}
    data = _message_dict(target, author, payload, webhook_id=wid)
    data["attachments"] = _attachments(files, target.id, data["id"])
    REC.webhook_sends.append({"webhook_id": wid, "channel_id": channel.id, "thread_id": params.get("thread_id"),
                              "username": author["username"], "avatar_url": payload.get("avatar_url"),
                              "content": data["content"], "embeds": data["embeds"], "message_id": data["id"],
                              "components": data["components"], "files": [a["filename"] for a in data["attachments"]],
                              "allowed_mentions": payload.get("allowed_mentions")})
    _publish(target, data)
    return data if params.get("wait") else None


def _bot_author() -> dict:
    return {**facts.dict_from_user(_state().user), "bot": True}


def _interaction_callback(iid: int, token: str, payload: dict) -> dict:
    ctx = REC.interactions[token]
    rtype, data = payload["type"], payload.get("data") or {}
    ephemeral = bool((data.get("flags") or 0) & 64)
    entry = {"kind": "response", "type": rtype, "content": data.get("content"), "embeds": data.get("embeds", []),
             "components": data.get("components", []), "ephemeral": ephemeral, "token": token, "payload": payload}
    REC.interaction_responses.append(entry)
    out: dict = {"interaction": {"id": str(iid), "type": ctx["type"], "response_message_loading": rtype == 5,
                                 "response_message_ephemeral": ephemeral}}
    if rtype == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
        _too_long(data)
        msg = _message_dict(ctx["channel"], _bot_author(), data)
        if not ephemeral:
            _publish(ctx["channel"], msg)
        ctx["original"] = msg
        out["interaction"]["response_message_id"] = str(msg["id"])
        out["resource"] = {"type": 4, "message": msg}
    elif rtype == 7:  # UPDATE_MESSAGE (component interactions)
        raw = _raw_message(ctx["channel"].id, ctx["message_id"])
        raw.update({k: data[k] for k in ("content", "embeds", "components") if k in data})
        raw["edited_timestamp"] = _iso()
        _state().parse_message_update(dict(raw))
        out["interaction"]["response_message_id"] = str(raw["id"])
        out["resource"] = {"type": 7, "message": raw}
    else:  # 5/6 defer, 9 modal, ...
        if rtype == 6:
            ctx["deferred_update"] = True
        if rtype == 9:
            REC.modals.append({"token": token, "data": data, "channel": ctx["channel"], "message_id": ctx.get("message_id")})
        out["resource"] = {"type": rtype}
    return out


def _interaction_webhook(method: str, path: str, token: str, payload: dict, route) -> dict | None:
    ctx = REC.interactions[token]
    REC.interaction_responses.append({"kind": f"{method} {path}", "content": payload.get("content"),
                                      "embeds": payload.get("embeds", []), "token": token, "payload": payload,
                                      "ephemeral": bool((payload.get("flags") or 0) & 64)})
    if method == "POST":  # followup.send
        _too_long(payload)
        msg = _message_dict(ctx["channel"], _bot_author(), payload)
        if not (payload.get("flags") or 0) & 64:
            _publish(ctx["channel"], msg)
        return msg
    if method == "PATCH" and route.url.split("?")[0].endswith("@original") and ctx.get("message_id") and ctx.get("deferred_update"):
        raw = _raw_message(ctx["channel"].id, ctx["message_id"])  # deferred component update: edit its message
        raw.update({k: payload[k] for k in ("content", "embeds", "components") if k in payload})
        raw["edited_timestamp"] = _iso()
        _state().parse_message_update(dict(raw))
        return dict(raw)
    if method == "PATCH":  # edit_original_response / followup edit
        base = ctx.get("original") or _message_dict(ctx["channel"], _bot_author(), {})
        base.update({k: payload[k] for k in ("content", "embeds", "components") if k in payload})
        ctx["original"] = base
        return base
    if method == "GET":
        return ctx.get("original")
    return None


# ----------------------------------------------------------------------------- public helpers
def _member_payload(member: discord.Member) -> dict:
    return {"user": facts.dict_from_user(member._user), "roles": [str(r.id) for r in member.roles[1:]],
            "joined_at": _iso(), "deaf": False, "mute": False, "flags": 0, "nick": member.nick,
            "permissions": str(member.guild_permissions.value)}


def _base_interaction(bot, itype: int, channel, member) -> tuple[str, dict]:
    token = f"itoken-{facts.make_id()}"
    parent = channel.parent if isinstance(channel, discord.Thread) else channel
    data = {
        "id": str(facts.make_id()), "application_id": str(bot.application_id or _state().user.id), "type": itype,
        "token": token, "version": 1, "guild_id": str(channel.guild.id), "channel_id": str(channel.id),
        "channel": {"id": str(channel.id), "type": channel.type.value, "guild_id": str(channel.guild.id),
                    "name": channel.name, "parent_id": str(parent.category_id or "") or None},
        "member": _member_payload(member), "locale": "en-US", "guild_locale": "en-US",
        "app_permissions": str(discord.Permissions.all().value), "entitlements": [],
        "authorizing_integration_owners": {}, "context": 0, "attachment_size_limit": 8 * 1024 * 1024,
    }
    REC.interactions[token] = {"type": itype, "channel": channel, "member": member}
    return token, data


async def _drain() -> None:
    me = asyncio.current_task()
    for _ in range(100):
        await dpytest.run_all_events()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                   and (t.get_name() == "CommandTree-invoker" or t.get_name().startswith(("discord-ui-view-dispatch",
                                                                                       "discord-ui-dynamic-item",
                                                                                       "discord-ui-modal-dispatch")))]
        if not pending:
            return
        await asyncio.gather(*pending, return_exceptions=True)


_OPT_TYPES = {str: 3, int: 4, bool: 5, float: 10}


def _option(name: str, value: Any) -> dict:
    if isinstance(value, discord.Member):
        return {"name": name, "type": 6, "value": str(value.id)}
    if isinstance(value, discord.Role):
        return {"name": name, "type": 8, "value": str(value.id)}
    if isinstance(value, (discord.TextChannel, discord.Thread, discord.CategoryChannel)):
        return {"name": name, "type": 7, "value": str(value.id)}
    return {"name": name, "type": _OPT_TYPES[type(value)], "value": value}


def _resolved(options: dict[str, Any]) -> dict:
    res: dict[str, dict] = {}
    for v in options.values():
        if isinstance(v, discord.Member):
            res.setdefault("users", {})[str(v.id)] = facts.dict_from_user(v._user)
            res.setdefault("members", {})[str(v.id)] = {k: x for k, x in _member_payload(v).items() if k != "user"}
        elif isinstance(v, discord.Role):
            res.setdefault("roles", {})[str(v.id)] = {**facts.dict_from_role(v), "id": str(v.id)}
        elif isinstance(v, (discord.TextChannel, discord.Thread, discord.CategoryChannel)):
            res.setdefault("channels", {})[str(v.id)] = {"id": str(v.id), "name": v.name, "type": v.type.value,
                                                         "permissions": str(discord.Permissions.all().value)}
    return res


async def invoke_slash(bot, qualified_name: str, *, channel: Any = 0, member: Any = 0, raise_errors: bool = True,
                       options_: dict[str, Any] | None = None, **options: Any) -> list[dict]:
    """Simulate a user running ``/qualified_name option=value ...``; returns the recorded responses.

    ``options_`` carries options whose names clash with this function's own (e.g. ``member``)."""
    options = {**(options_ or {}), **options}
    cfg = dpytest.get_config()
    channel = cfg.channels[channel] if isinstance(channel, int) else channel
    member = cfg.members[member] if isinstance(member, int) else member
    token, data = _base_interaction(bot, 2, channel, member)
    *path, leaf = qualified_name.split()
    opts = [_option(k, v) for k, v in options.items()]
    if path:  # subcommand (and optional group): /group [sub] leaf
        opts = [{"name": leaf, "type": 1, "options": opts}]
        for group in reversed(path[1:]):
            opts = [{"name": group, "type": 2, "options": opts}]
    data["data"] = {"id": str(facts.make_id()), "name": (path or [leaf])[0], "type": 1, "options": opts,
                    "resolved": _resolved(options)}
    start_r, start_e = len(REC.interaction_responses), len(REC.app_errors)
    _state().parse_interaction_create(data)
    await _drain()
    if raise_errors and len(REC.app_errors) > start_e:
        raise REC.app_errors[start_e]
    return [r for r in REC.interaction_responses[start_r:] if r["token"] == token]


async def click(message: discord.Message, custom_id: str, *, member: Any = 0, component_type: int = 2,
                values: list[str] | None = None) -> list[dict]:
    """Simulate a member clicking a button (or picking select ``values``) on a bot message."""
    cfg = dpytest.get_config()
    member = cfg.members[member] if isinstance(member, int) else member
    bot = cfg.client
    token, data = _base_interaction(bot, 3, message.channel, member)
    REC.interactions[token]["message_id"] = message.id
    data["message"] = dict(_raw_message(message.channel.id, message.id))
    data["data"] = {"custom_id": custom_id, "component_type": component_type}
    if values is not None:
        data["data"]["values"] = values
    start_r, start_e = len(REC.interaction_responses), len(REC.view_errors)
    _state().parse_interaction_create(data)
    await _drain()
    if len(REC.view_errors) > start_e:
        raise REC.view_errors[start_e]
    return [r for r in REC.interaction_responses[start_r:] if r["token"] == token]


async def submit_modal(modal: dict[str, Any], values: dict[str, str], *, member: Any = 0) -> list[dict]:
    """Submit a modal the bot opened (an entry of ``REC.modals``) with ``values`` by text-input custom_id."""
    cfg = dpytest.get_config()
    member = cfg.members[member] if isinstance(member, int) else member
    token, data = _base_interaction(cfg.client, 5, modal["channel"], member)
    if modal.get("message_id"):
        REC.interactions[token]["message_id"] = modal["message_id"]
        data["message"] = dict(_raw_message(modal["channel"].id, modal["message_id"]))
    rows = []
    for comp in modal["data"].get("components", []):
        inner = comp.get("component") or (comp.get("components") or [{}])[0]
        cid = inner.get("custom_id")
        rows.append({"type": 1, "components": [{"type": 4, "custom_id": cid, "value": values.get(cid, "")}]})
    data["data"] = {"custom_id": modal["data"]["custom_id"], "components": rows}
    start_r, start_e = len(REC.interaction_responses), len(REC.view_errors)
    _state().parse_interaction_create(data)
    await _drain()
    if len(REC.view_errors) > start_e:
        raise REC.view_errors[start_e]
    return [r for r in REC.interaction_responses[start_r:] if r["token"] == token]


def move_to(new_bot) -> None:
    """A restart: the fake Discord (guilds, channels, messages, webhooks) now talks to ``new_bot``.

    Call before ``new_bot``'s setup hook. Persistent components registered by the old bot are
    forgotten, so only what the new bot registers can answer a click.
    """
    from discord.ui.view import ViewStore

    state = _state()
    old_bot = dpytest.get_config().client
    new_bot.http = state.http
    new_bot.ws = old_bot.ws
    state._get_client = lambda: new_bot
    real = new_bot.dispatch

    def dispatch(*args, **kwargs):
        if not state._do_dispatch:
            return None
        return real(*args, **kwargs)

    state.dispatch = dispatch
    state._view_store = ViewStore(state)
    state._command_tree = new_bot.tree
    new_bot._connection = state
    new_bot.tree._state = state
    import discord.ext.test.runner as runner

    runner._cur_config = runner._cur_config._replace(client=new_bot)


def install(bot, monkeypatch, *, strict_limits: bool = True) -> Recorder:
    """Call right after ``dpytest.configure(bot)``; returns the per-test Recorder."""
    global REC
    REC = Recorder()
    REC.strict_limits = strict_limits
    state = _state()
    state.loop = asyncio.get_running_loop()  # FakeState never sets it -> typing() crashes
    state._command_tree = bot.tree           # FakeState replaced the state the tree registered with

    # --- enum-in-payload bugs
    orig_dfc, orig_dfo, orig_dfm, orig_mmd = (facts.dict_from_channel, facts.dict_from_overwrite,
                                              facts.dict_from_message, facts.make_message_dict)

    def dict_from_channel(channel):
        d = orig_dfc(channel)
        if d is not None:
            d["type"] = channel.type.value
            if isinstance(channel, discord.TextChannel):
                d.update(topic=channel.topic, nsfw=channel.nsfw, rate_limit_per_user=channel.slowmode_delay)
        return d

    def dict_from_overwrite(target, overwrite):
        d = orig_dfo(target, overwrite)
        d["type"] = 0 if isinstance(target, discord.Role) else 1
        return d

    def dict_from_message(message):
        d = orig_dfm(message)
        if isinstance(d.get("type"), discord.MessageType):
            d["type"] = d["type"].value
        return d

    def make_message_dict(*a, **kw):
        d = orig_mmd(*a, **kw)
        d.setdefault("components", [])
        return d

    monkeypatch.setattr(facts, "dict_from_channel", dict_from_channel)
    monkeypatch.setattr(facts, "dict_from_overwrite", dict_from_overwrite)
    monkeypatch.setattr(facts, "dict_from_message", dict_from_message)
    monkeypatch.setattr(facts, "make_message_dict", make_message_dict)

    orig_reaction = type(state).parse_message_reaction_add

    def parse_message_reaction_add(self, data):
        data.setdefault("type", 0)
        data.setdefault("burst", False)
        return orig_reaction(self, data)

    monkeypatch.setattr(type(state), "parse_message_reaction_add", parse_message_reaction_add)

    orig_fcm = back.find_channel_mentions

    def find_channel_mentions(content, guild):  # a <#thread> mention made dpytest crash
        return [c for c in orig_fcm(content, guild) if c is not None]

    monkeypatch.setattr(back, "find_channel_mentions", find_channel_mentions)

    H = back.FakeHttp
    monkeypatch.setattr(H, "send_message", _wrap_send_message(H.send_message))
    orig_logs_from = H.logs_from

    async def logs_from(self, channel_id, limit, before=None, after=None, around=None):  # KeyError for a channel with no message yet
        _raw_messages(channel_id)
        return await orig_logs_from(self, int(channel_id), limit, before=before, after=after, around=around)

    monkeypatch.setattr(H, "logs_from", logs_from)
    for name, fn in {
        "create_role": _create_role, "edit_role": _edit_role, "edit_channel": _edit_channel,
        "get_all_guild_channels": _get_all_guild_channels,
        "start_thread_without_message": _start_thread_without_message,
        "start_thread_with_message": _start_thread_with_message,
        "create_webhook": _create_webhook, "channel_webhooks": _channel_webhooks, "guild_webhooks": _guild_webhooks,
    }.items():
        monkeypatch.setattr(H, name, fn)
    monkeypatch.setattr(AsyncWebhookAdapter, "request", _adapter_request)

    # --- surface app-command / view errors to the test (dpytest only does this for prefix commands)
    orig_tree_error = bot.tree.on_error

    async def tree_on_error(interaction, error):
        REC.app_errors.append(error)
        await orig_tree_error(interaction, error)

    bot.tree.on_error = tree_on_error
    orig_view_error = discord.ui.view.BaseView.on_error

    async def view_on_error(self, interaction, error, item):
        REC.view_errors.append(error)
        await orig_view_error(self, interaction, error, item)

    monkeypatch.setattr(discord.ui.view.BaseView, "on_error", view_on_error)
    return REC
