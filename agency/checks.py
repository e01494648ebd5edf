"""Cheap, deterministic checks that the work is real, before a model is paid to judge it.

No model is called here: these are word heuristics, tuned to catch what real
small models were seen to do and to let real work through. Each returns a
reason addressed to the model that wrote the text, or nothing.

**A submission** (:func:`submission_problem`) goes back to its specialist,
without a review call, when:

1. *it is a plan to work, not the work*: its sentences that announce work
   ("I will start gathering...", "Next, I'll...", "Let me...", "I am working
   on it", "Stay tuned") are taken out, and what is left is under
   ``max(min_chars, 150)`` characters. A 300-word output with an "I will" in
   it keeps its 300 words and passes;
2. *it restates the task*: at least 70% of its content words come from the
   task (title, description, criteria) or the objective, and it adds fewer
   than 8 words of its own (numbers count as its own);
3. *it is too short*: under ``min_chars`` characters (``engine.min_output_chars``);
4. *it is off the subject*: it has at least 20 distinct content words and
   shares none with the task's criteria, title and description or the
   objective (a shorter text proves nothing by missing them; an on-topic
   output that misses a criterion is the Collaborator's to judge).

**A plan** (:func:`uncovered`) goes back to the PM when one of its required
outputs or success criteria shares no content word with any task (its title,
description, criteria, and its stream's key, goal and criteria): "a one-task
plan for a three-output objective" names the outputs no task produces.

Words are compared by a crude stem (lower case, a common suffix stripped, the
first 6 letters), after dropping function words and the words every plan and
every piece of work uses ("document", "report", "task", "objective",
"accepted", "clear", "complete", ...): an output such as "a Markdown document"
or a criterion such as "clear and complete" has nothing specific to cover and
always passes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d+(?:[.,]\d+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_BULLET = re.compile(r"^\s*(?:[-*+•>#]+|\d+[.)])\s*")
_SUFFIXES = ("ations", "ation", "ments", "ment", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s", "e")

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing done down during each either else etc few for from further had has have having he
her here hers him his how i if in into is it its itself just may me might more most must my no nor not now of off
on once one only or other our ours out over own per same shall she should so some such than that the their theirs
them then there these they this those through to too two three four five under until up upon us very via was we
were what when where which while who whom why will with within without would yet you your yours
""".split())

# words every plan and every piece of work uses: they say nothing about what a task produces
GENERIC = frozenset("""
accept accepted accepting answer answers answering approach clear clearly complete completed completes comprehensive
concise correct correctly deliver deliverable deliverables delivered document documents done draft final finished
format formatted good high markdown md objective objectives output outputs part parts plan plans project quality
ready report reports result results section sections specific step steps task tasks thorough well work works
written write writes writing item items every need needs needed make makes made use uses used using given include
includes including provide provides provided overall main key relevant useful based end ensure ensures
""".split())

_LEAD = r"(?:(?:ok(?:ay)?|sure|alright|great|first(?:ly)?|next|then|now|so|to (?:start|begin)|as (?:a )?next step)[,:]?\s+)*"
_INTENT = re.compile(
    _LEAD + r"(?:"
    r"(?:i|we)\s*(?:'ll|’ll|\s+will|\s+shall|\s+am going to|\s+are going to|'m going to|’m going to|'re going to"
    r"|\s+am about to|'m about to|\s+plan to|\s+intend to|\s+would like to|'d like to|\s+need to|\s+want to|\s+aim to|\s+hope to)\b"
    r"|(?:i|we)\s*(?:\s+am|'m|’m|\s+are|'re|’re)\s+(?:now\s+|currently\s+|still\s+|just\s+)?(?:starting|beginning|working|going"
    r"|gathering|researching|looking|preparing|collecting|compiling|drafting|writing|analy[sz]ing|reviewing|reading|searching"
    r"|planning|getting|putting|checking|on it)\b"
    r"|(?:i|we)\s+(?:have\s+|'ve\s+)?(?:started|begun)\b"
    r"|let(?:'s|’s| me| us)\b"
    r"|(?:my\s+|our\s+|the\s+)?next steps?\b"
    r"|(?:will|going to)\s+(?:start|begin|provide|share|submit|send|deliver|follow|update|post)\b"
    r"|(?:stay tuned|more to come|coming soon|(?:work )?in progress|wip|to be (?:continued|completed|done|added))\b"
    r"|(?:starting|beginning)\s+(?:now|work|to|with|on)\b"
    r")",
    re.IGNORECASE,
)
PLAN_TO_WORK_FLOOR = 150  # characters of real content an output needs beside its announcements
RESTATE_SHARE = 0.7
RESTATE_OWN_WORDS = 8
OFF_TOPIC_MIN_WORDS = 20  # below this many distinct content words, no overlap proves nothing (the size rule applies)


def stem(word: str) -> str:
    w = word.lower().strip("'’-")
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[: -len(suf)]
            break
    return w[:6]


def words(*texts: str | None) -> list[str]:
    """The content words of ``texts`` as stems: no function words, no generic plan-and-work words."""
    out = []
    for text in texts:
        for w in _WORD.findall(text or ""):
            lw = w.lower().strip("'’-")
            if lw in STOPWORDS or lw in GENERIC or (len(lw) < 3 and not lw.isdigit()):
                continue
            out.append(stem(lw))
    return out


def announcements(text: str) -> tuple[list[str], str]:
    """(the sentences that announce work instead of doing it, the rest of the text)."""
    said: list[str] = []
    rest: list[str] = []
    for raw in _SENTENCE.split(text or ""):
        sentence = _BULLET.sub("", raw).strip()
        if not sentence:
            continue
        (said if _INTENT.match(sentence) else rest).append(sentence)
    return said, " ".join(rest)


def submission_problem(output: str, task: dict[str, Any], *, min_chars: int, objective: str = "") -> str | None:
    """Why ``output`` is not yet work worth a review (see the module's rules), or None."""
    text = (output or "").strip()
    said, rest = announcements(text)
    floor = max(min_chars, PLAN_TO_WORK_FLOOR)
    if said and len(rest) < floor:
        quoted = _clip(said[0], 80)
        return (f"it says what you will do (\"{quoted}\"), not the work itself; do the work now and put the complete result in "
                f"`output` when you /submit {task.get('key', '')}".rstrip())
    criteria = [str(c) for c in task.get("success_criteria") or []]
    task_words = set(words(task.get("title"), task.get("description"), *criteria, objective))
    mine = words(rest or text)
    if mine:
        own = {w for w in mine if w not in task_words}
        share = sum(1 for w in mine if w in task_words) / len(mine)
        if share >= RESTATE_SHARE and len(own) < RESTATE_OWN_WORDS:
            return "it restates the task instead of doing it; submit the result the task asks for"
    if len(text) < min_chars:
        return (f"it is {len(text)} characters; a submission is the complete work product, at least {min_chars} characters, "
                "in `output`")
    used = set(words(text))
    if task_words and len(used) >= OFF_TOPIC_MIN_WORDS and not task_words & used:
        return ("it addresses neither the task's success criteria (" + "; ".join(_clip(c, 80) for c in criteria[:5])
                + ") nor its subject")
    return None


def uncovered(outputs: Iterable[str], criteria: Iterable[str], tasks: Iterable[Any], streams: Iterable[Any]) -> list[str]:
    """Problems for a plan's required outputs and success criteria that no task covers (``tasks`` and
    ``streams`` are the plan's TaskSpec and StreamSpec objects)."""
    by_key = {st.key: st for st in streams}
    covered: set[str] = set()
    for t in tasks:
        st = by_key.get(t.stream)
        covered.update(words(t.title, t.description, *t.success_criteria, t.stream,
                             *([st.goal, *st.success_criteria] if st is not None else [])))
    problems = []
    for o in outputs:
        if (w := set(words(o))) and not w & covered:
            problems.append(f"required output {o!r} is produced by no task: add a task for it, or name it in the "
                            "description and criteria of the task that produces it")
    for c in criteria:
        if (w := set(words(c))) and not w & covered:
            problems.append(f"success criterion {c!r} is addressed by no task: name it in the criteria of the tasks that meet it")
    return problems


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
