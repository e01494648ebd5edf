import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agency import commands as c
from agency.errors import AgencyError, CommandError, PermissionDeniedError


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ("/submit T1", "submit", {"task": "T1"}),
        ("/ask @Writer-A what tone?", "ask", {"handle": "Writer-A", "question": "what tone?"}),
        ("/review T2 revise fix the intro", "review", {"task": "T2", "decision": "revise", "notes": "fix the intro"}),
        ("/feedback @Researcher-A 4 solid sources", "feedback", {"handle": "Researcher-A", "rating": 4, "text": "solid sources"}),
        ("/approve 2", "approve", {"choice": 2}),
        ("/reject needs more data", "reject", {"reason": "needs more data"}),
        ("/project new Build a landing page", "project new", {"objective": "Build a landing page"}),
        ("/specialist rollback Writer-A 3", "specialist rollback", {"handle": "Writer-A", "version": 3}),
        ("/budget $5", "budget", {"amount": 5.0}),
    ],
)
def test_parse(text: str, name: str, args: dict) -> None:
    cmd = c.parse(text)
    assert (cmd.name, cmd.args) == (name, args)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("/frobnicate", "Unknown command `/frobnicate`"),
        ("/review T2 maybe", "must be one of accept, revise"),
        ("/feedback @Ann 9 wow", "from 1 to 5"),
        ("submit T1", "Commands start with '/'"),
        ("/project", "needs one of"),
        ("/submit", "missing <task>"),
        ("/assign T1", "missing <handle>"),
        ("/sync now please", "unexpected text"),
        ("/submit " + "x" * 5000, "the limit is"),
    ],
)
def test_parse_errors_say_what_to_fix(text: str, hint: str) -> None:
    with pytest.raises(CommandError) as e:
        c.parse(text)
    assert hint in e.value.user_message


def test_models_never_issue_director_commands() -> None:
    for text in ("/approve", "/reject no", "/project cancel", "/budget 100", "/feedback @PM 5 great"):
        cmd = c.parse(text)
        for role in ("pm", "collaborator", "specialist", "learning", "director"):
            with pytest.raises(PermissionDeniedError):
                c.authorize(cmd, role, is_model=True)
    c.authorize(c.parse("/approve"), "director", is_model=False)


def test_role_boundaries() -> None:
    with pytest.raises(PermissionDeniedError, match="for pm"):
        c.authorize(c.parse("/assign T1 @Ann"), "specialist", is_model=True)
    with pytest.raises(PermissionDeniedError):
        c.authorize(c.parse("/review T1 accept"), "specialist", is_model=True)
    c.authorize(c.parse("/submit T1"), "specialist", is_model=True)
    c.authorize(c.parse("/review T1 accept"), "collaborator", is_model=True)


def test_custom_commands_only_for_their_owner() -> None:
    cmd = c.parse("/cite https://example.org", custom={"cite"})
    assert cmd.custom and cmd.args["text"] == "https://example.org"
    c.authorize(cmd, "specialist", is_model=True, custom={"cite"})
    with pytest.raises(PermissionDeniedError):
        c.authorize(cmd, "specialist", is_model=True, custom=set())
    with pytest.raises(CommandError):
        c.parse("/cite x")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_crashes(text: str) -> None:
    try:
        cmd = c.parse(text)
    except AgencyError as e:
        assert e.user_message.strip()
    else:
        assert cmd.name in c.SPECS


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(c.SPECS)), st.lists(st.text(min_size=1, max_size=15).filter(lambda s: s.strip()), max_size=4))
def test_known_commands_with_random_args(name: str, args: list[str]) -> None:
    try:
        cmd = c.parse("/" + name + " " + " ".join(args))
    except AgencyError as e:
        assert "Usage" in e.user_message or "must" in e.user_message or "needs" in e.user_message or "limit" in e.user_message
    else:
        assert cmd.name == name
