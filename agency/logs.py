"""Logging: structlog over the standard library; JSON when not on a terminal.

Redaction
---------
:func:`redact` is the one function every outgoing text goes through: log
records (a processor of the pipeline configured here), chat messages and
events (``agency.db.repos``), records and prompts sent to a model
(``agency.llm.client``), audit exports (``agency.audit``) and what a person
types (``agency.service``). Each secret it finds becomes ``[REDACTED]``.

What it finds:

1. the values of the configured secrets (``OPENAI_API_KEY``, ``DISCORD_TOKEN``
   in the environment), wherever they appear, whatever their shape;
2. private key blocks, when detect-secrets' ``PrivateKeyDetector`` sees a key
   marker: a PEM block from ``-----BEGIN ... PRIVATE KEY-----`` through its
   ``-----END ...-----`` line (to the end of the text when the end was cut off)
   and a PuTTY key file through ``Private-MAC`` are removed whole;
3. what the plugins of the maintained `detect-secrets` package find. The set is
   chosen deliberately: the detectors of a key's *shape* (a vendor prefix or
   structure) and of a secret *assignment*, never a guess from randomness:

   - AWS (access key ids, quoted secret keys), Azure storage, GitHub (``ghp_``
     and the other classic prefixes), GitLab, Slack (``xox?-`` tokens and
     webhooks), Stripe, Discord bot tokens, JWTs (only formally valid ones),
     OpenAI (legacy keys), SendGrid, Mailchimp, Twilio, Telegram, Square, PyPI
     and npm tokens, IBM Cloud, Cloudant and SoftLayer credentials, passwords
     in URLs (``scheme://user:password@host``);
   - ``KeywordDetector``: a quoted value assigned to a secret-sounding name
     (``password``, ``api_key``, ``secret``...: ``api_key = "..."``,
     ``"password": "..."``) and an unquoted ``NAME_PASSWORD=value`` as in an
     ``.env`` file. Not the ``name: value`` form without quotes, which is how
     prose reads ("Password: at least 12 characters"). Values are dropped when
     detect-secrets' heuristic filters call them false positives (templates
     ``{...}``, ``<...>``, ``${...}``; ``$VARIABLES``; sequences such as
     ``abcdef``; ``*****``; indirect references such as
     ``password = os.environ["X"]``), when they contain spaces (words, not a
     key: a passphrase with spaces is missed) and, unquoted, when they have no
     digit (``api_key=SECRET`` is code naming a variable).

   Left out on purpose: ``Base64HighEntropyString`` and
   ``HexHighEntropyString`` (they fire on any quoted git SHA, UUID, hash or
   base64 blob, which models and people write all the time: redacting them
   would corrupt ordinary text and code), ``IPPublicDetector`` (an address is
   not a secret) and ``ArtifactoryDetector`` (its password shape, ``AP`` and a
   hex digit then 8 letters or digits, matches ordinary upper-case
   identifiers).
4. shapes detect-secrets 1.5 has no plugin for, written as plugins of the same
   interface (:class:`detect_secrets.plugins.base.RegexBasedDetector`) so that
   they go the same way: Google API keys (``AIza...``), GitHub fine-grained
   tokens (``github_pat_...``), current OpenAI/Anthropic-style keys
   (``sk-proj-...``, ``sk-ant-...``), bearer and ``Authorization:`` header
   tokens (with a digit: "the bearer of bad news" stays), AWS secret access
   keys assigned without quotes (the ``~/.aws/credentials`` and ``.env`` form)
   and PKCS#8 ``ENCRYPTED PRIVATE KEY`` markers.

A value found by a shape detector is replaced wherever it occurs, widened to
the whole token it sits in (letters, digits, ``_`` and ``-``): a plugin that
matches a fixed-length prefix of a longer token (Stripe, Discord, a JWT's
signature) leaves nothing of it behind. A value found by ``KeywordDetector`` or
in a URL (a password may be a short, ordinary word) is replaced only in the
lines it was found in.

Cost: each detector runs only where it can match (a literal each match
contains; the assignment detectors, the costly ones, only on the lines that
carry one of their names), and the result for a text is kept in an LRU cache
(1024 texts of up to 16 kB), since the same text is redacted many times: every
prompt repeats a project's history. ``tests/security/test_redaction_corpus.py``
holds the corpus and prints the cost.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

REDACTED = "[REDACTED]"
_SECRET_ENV = ("OPENAI_API_KEY", "DISCORD_TOKEN")
_MIN_VALUE = 6  # a shorter configured value or found secret is not replaced (it would cut up ordinary words)
_CACHE_TEXT_MAX = 16_384  # longer texts are redacted without the cache (bounds its memory: 1024 entries)

# a private key block: from its BEGIN line through its END line, or to the end of a text that was cut short
_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
    r"|PuTTY-User-Key-File-\d+:.*?(?:Private-MAC:[ \t]*[0-9A-Fa-f]+|\Z)",
    re.S,
)
_TOKEN_CHARS = "[A-Za-z0-9_\\-]*"
# the IBM, Cloudant, SoftLayer and AWS assignment detectors look for values of 24 to 64 such characters
_LONG_RUN = re.compile(r"[A-Za-z0-9_\-/+]{24}")


@dataclass(frozen=True)
class _Scan:
    """A detector and where it runs: only where one of ``words`` occurs (lower case; none: everywhere) and, for
    ``per_line`` scans (the costly assignment detectors), only on the lines that carry one (detect-secrets scans
    lines). Literal searches: Python's ``re`` has no fast path for a case-insensitive alternation."""

    plugin: Any
    words: tuple[str, ...] = ()
    per_line: bool = False
    line_needs: re.Pattern[str] | None = None  # a line scan also skips the lines this finds nothing in
    local: bool = False  # values replaced only in the lines they were found in (a password must not be cut out of prose)
    filtered: bool = False  # values checked by detect-secrets' heuristic filters and ours (KeywordDetector's)


@functools.cache
def _detectors() -> tuple[Any, tuple[_Scan, ...]]:
    """The private key detector and the scans, built once (importing detect-secrets costs ~0.1 s)."""
    from detect_secrets.plugins import keyword as kw
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.cloudant import CloudantDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
    from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.softlayer import SoftlayerDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    class PrivateKey(PrivateKeyDetector):
        denylist = [*PrivateKeyDetector.denylist, re.compile(r"BEGIN ENCRYPTED PRIVATE KEY")]  # PKCS#8, missing in 1.5

    class Keyword(kw.KeywordDetector):
        """Quoted values of secret-sounding names, and ``NAME=value`` (an .env line); not ``name: value`` (prose)."""

        _groups = {**kw.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, kw.FOLLOWED_BY_EQUAL_SIGNS_REGEX: 5}

        def analyze_string(self, string: str, denylist_regex_to_group: Any = None) -> Any:
            return super().analyze_string(string, self._groups)

    class GoogleApiKey(RegexBasedDetector):
        secret_type = "Google API Key"
        denylist = [re.compile(r"AIza[0-9A-Za-z_\-]{35}")]

    class GitHubFineGrainedToken(RegexBasedDetector):
        secret_type = "GitHub Fine-grained Token"
        denylist = [re.compile(r"github_pat_[A-Za-z0-9_]{22,}")]

    class PrefixedApiKey(RegexBasedDetector):
        """OpenAI project/service-account and Anthropic keys (the OpenAI plugin knows only the legacy shape)."""

        secret_type = "sk- API Key"
        denylist = [re.compile(r"sk-(?<![A-Za-z0-9_\-]sk-)[A-Za-z0-9_\-]{16,}")]  # "sk-" first: a fast literal search

    class AuthHeader(RegexBasedDetector):
        """``Bearer <token>`` anywhere and the value of an ``Authorization`` header (a token has a digit)."""

        secret_type = "Authorization Token"
        _token = r"((?=[A-Za-z0-9._~+/\-]*\d)[A-Za-z0-9._~+/\-]{12,}=*)"
        denylist = [
            re.compile(r"(?i)\bbearer\s+" + _token),
            re.compile(r"(?i)\bauthorization[\"']?\s*[:=]\s*[\"']?(?:basic\s+|token\s+)?" + _token),
        ]

    class AwsSecretAssigned(RegexBasedDetector):
        """An AWS secret access key assigned with or without quotes (the plugin needs quotes)."""

        secret_type = "AWS Secret Access Key"
        denylist = [re.compile(r"(?i)aws.{0,20}?(?:key|secret|token).{0,20}?[=:]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")]

    # each shape detector's words: a literal every match contains (lower-cased), so a text without any skips it
    shapes: list[tuple[Any, tuple[str, ...]]] = [
        (AWSKeyDetector, ("a3t", "abia", "acca", "akia", "asia", "aws")),
        (AzureStorageKeyDetector, ("accountkey=",)),
        (DiscordBotTokenDetector, ()),
        (GitHubTokenDetector, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
        (GitLabTokenDetector, ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "gr1348941", "glcbt-", "glimt-", "glptt-",
                               "glagent-", "gloas-")),
        (JwtTokenDetector, ("eyj",)),
        (MailchimpDetector, ("-us",)),
        (NpmDetector, ("_authtoken=",)),
        (OpenAIDetector, ("t3blbkfj",)),
        (PypiTokenDetector, ("pypi-ag",)),
        (SendGridDetector, ("sg.",)),
        (SlackDetector, ("xox", "hooks.slack.com")),
        (SquareOAuthDetector, ("sq0csp-",)),
        (StripeDetector, ("k_live_",)),
        (TelegramBotTokenDetector, ()),
        (TwilioKeyDetector, ()),
        (GoogleApiKey, ("aiza",)),
        (GitHubFineGrainedToken, ("github_pat_",)),
        (PrefixedApiKey, ("sk-",)),
    ]
    # the names KeywordDetector's DENYLIST accepts (api_?key, db_?pass, password...), as literals
    keyword_words = (
        *(f"{a}{sep}key" for a in ("api", "auth", "service", "account", "db", "database", "priv", "private", "client")
          for sep in ("_", "")),
        *(f"{a}{sep}pass" for a in ("db", "database", "key") for sep in ("_", "")),
        "passw", "pwd", "secret", "contrase",
    )
    scans = (
        *(_Scan(cls(), words) for cls, words in shapes),
        _Scan(AuthHeader(), ("bearer", "authorization"), per_line=True),
        _Scan(BasicAuthDetector(), ("://",), per_line=True, local=True),
        # the assignment detectors are the costly ones (up to 1 ms for 2 kB of text each): only the lines with their words
        _Scan(Keyword(), keyword_words, per_line=True, line_needs=re.compile(r"[=\"'`]"), local=True,
              filtered=True),
        _Scan(IbmCloudIamDetector(), ("key", "pwd", "pass", "token"), per_line=True, line_needs=_LONG_RUN),
        _Scan(IbmCosHmacDetector(), ("secret",), per_line=True, line_needs=_LONG_RUN),
        _Scan(CloudantDetector(), ("key", "pw", "pass", "token", "cloudant"), per_line=True, line_needs=_LONG_RUN),
        _Scan(SoftlayerDetector(), ("key", "pwd", "pass", "token", "softlayer"), per_line=True, line_needs=_LONG_RUN),
        _Scan(AwsSecretAssigned(), ("aws",), per_line=True, line_needs=_LONG_RUN),
    )
    return PrivateKey(), scans


_CODE_PUNCTUATION = re.compile(r"[\s()\[\]{},;]")


def _is_false_positive(value: str, line: str) -> bool:
    """A KeywordDetector value that is no secret: detect-secrets' heuristics (a template, a $VARIABLE, a sequence,
    no letters, an indirect reference); words with spaces (``"password": "at least 8 characters"``); and an
    unquoted value that reads as code rather than an .env value (``api_key=SECRET``): it must have a digit."""
    from detect_secrets.filters import heuristic as h

    if h.is_templated_secret(value) or h.is_prefixed_with_dollar_sign(value) or h.is_sequential_string(value) \
            or h.is_not_alphanumeric_string(value) or any(c.isspace() for c in value):  # words: prose, not a secret
        return True
    if any(f"{q}{value}{q}" in line for q in "\"'`"):
        return False
    return h.is_indirect_reference(line) or bool(_CODE_PUNCTUATION.search(value)) or not any(c.isdigit() for c in value)


def _values(plugin: Any, text: str) -> Iterator[str]:
    """What ``plugin`` finds in ``text``. A plain ``RegexBasedDetector`` yields its patterns' capture groups, and
    some groups capture only a prefix (the GitHub and GitLab token patterns capture ``ghp``/``glpat``, not the
    token): a match yields its groups of at least ``_MIN_VALUE`` characters that do not start the match (a
    value after a name: ``aws_secret_access_key = "..."``, ``://user:password@``), or else the whole match.
    Plugins with their own ``analyze_string`` (JWT validity, keywords) are asked as they are."""
    from detect_secrets.plugins.base import RegexBasedDetector

    if type(plugin).analyze_string is not RegexBasedDetector.analyze_string:
        yield from plugin.analyze_string(text)
        return
    for regex in plugin.denylist:
        for m in regex.finditer(text):
            groups = [m.group(i) for i in range(1, (m.re.groups or 0) + 1)
                      if m.start(i) > m.start() and len(m.group(i) or "") >= _MIN_VALUE]
            if groups:
                yield from groups
            else:
                yield m.group()


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lines(text: str, lower: str, words: tuple[str, ...]) -> list[tuple[int, int]]:
    """The (start, end) of each line of ``text`` that contains one of ``words`` (``lower``: ``text`` lower-cased)."""
    hits: list[int] = []
    for w in words:
        i = lower.find(w)
        while i >= 0:
            hits.append(i)
            i = lower.find(w, i + len(w))
    spans: list[tuple[int, int]] = []
    end = -1
    for i in sorted(hits):
        if i <= end:
            continue  # in the line already taken
        start = text.rfind("\n", 0, i) + 1
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        spans.append((start, end))
    return spans


def _find(text: str) -> tuple[set[str], dict[tuple[int, int], set[str]]]:
    """The secret values the detectors find in ``text``: those to remove everywhere, and by the (start, end) of
    their line those to remove only from that line (KeywordDetector's, passwords in URLs)."""
    _, scans = _detectors()
    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters lower-case to two characters: keep the positions
        lower = text.translate(_ASCII_LOWER)
    found: set[str] = set()
    local: dict[tuple[int, int], set[str]] = {}
    for scan in scans:
        if not scan.per_line:
            if not scan.words or any(w in lower for w in scan.words):
                found.update(_values(scan.plugin, text))
            continue
        for span in _lines(text, lower, scan.words):
            line = text[span[0]:span[1]]
            if scan.line_needs is not None and not scan.line_needs.search(line):
                continue
            for value in _values(scan.plugin, line):
                if len(value) < _MIN_VALUE or (scan.filtered and _is_false_positive(value, line)):
                    continue
                if scan.local:
                    local.setdefault(span, set()).add(value)
                else:
                    found.add(value)
    return {v for v in found if len(v) >= _MIN_VALUE}, local


def _redact(text: str, configured: tuple[str, ...]) -> str:
    for value in configured:
        text = text.replace(value, REDACTED)
    private_key, _ = _detectors()
    if ("PRIVATE KEY" in text or "PuTTY-User-Key-File" in text) and any(private_key.analyze_string(text)):
        text = _KEY_BLOCK.sub(REDACTED, text)
    found, local = _find(text)
    for (start, end), values in sorted(local.items(), reverse=True):  # from the end: earlier spans stay valid
        line = text[start:end]
        for value in sorted(values, key=len, reverse=True):
            line = line.replace(value, REDACTED)
        text = text[:start] + line + text[end:]
    if found:
        alternatives = "|".join(re.escape(v) for v in sorted(found, key=len, reverse=True))
        # widen each match to the whole token: a plugin may match a fixed-length prefix of a longer one
        text = re.sub(f"{_TOKEN_CHARS}(?:{alternatives}){_TOKEN_CHARS}", REDACTED, text)
    return text


_redact_cached = functools.lru_cache(maxsize=1024)(_redact)


def redact(text: str) -> str:
    """Remove secrets from text meant for logs, chat, records, exports or a model (see the module docstring)."""
    if not text:
        return text
    configured = tuple(v for name in _SECRET_ENV if (v := os.environ.get(name)) and len(v) >= _MIN_VALUE)
    if len(text) > _CACHE_TEXT_MAX:
        return _redact(text, configured)
    return _redact_cached(text, configured)


def _redact_processor(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    for k, v in list(event_dict.items()):
        if isinstance(v, str):
            event_dict[k] = redact(v)
    return event_dict


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not (hasattr(stream, "isatty") and stream.isatty())
    shared: list[Processor] = [
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
