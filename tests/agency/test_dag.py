import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agency import dag


def test_cycle_is_named_with_its_path() -> None:
    g = {"A": [], "B": ["A", "C"], "C": ["D"], "D": ["B"]}
    problems = dag.validate(list(g), g)
    assert problems == ["dependency cycle: B -> C -> D -> B"]


def test_unknown_duplicate_self_and_missing_assignments() -> None:
    problems = dag.validate(
        ["T1", "T2", "T2", "T3"],
        {"T1": ["T9"], "T2": [], "T3": ["T3"]},
        streams={"T1": "research", "T2": "", "T3": "nowhere"},
        assignees={"T1": "Ann", "T2": "Bob", "T3": ""},
        known_streams=["research"],
        known_assignees=["Ann"],
    )
    text = "\n".join(problems)
    assert "task T1 depends on unknown task T9" in text
    assert "task id T2 is used more than once" in text
    assert "task T3 depends on itself" in text
    assert "task T2 has no stream" in text
    assert "unknown stream 'nowhere'" in text
    assert "task T3 has no assignee" in text
    assert "unknown member @Bob" in text


def test_ready_layers_and_critical_path() -> None:
    g = {"A": [], "B": ["A"], "C": ["A"], "D": ["B", "C"], "E": []}
    assert dag.ready(g, done=set()) == ["A", "E"]
    assert dag.ready(g, done={"A"}, started={"E"}) == ["B", "C"]
    assert dag.layers(g) == [["A", "E"], ["B", "C"], ["D"]]
    path, length = dag.critical_path(g, {"A": 1, "B": 5, "C": 1, "D": 1, "E": 2})
    assert path == ["A", "B", "D"] and length == 7
    with pytest.raises(ValueError):
        dag.layers({"X": ["Y"], "Y": ["X"]})


graphs = st.dictionaries(
    st.sampled_from([f"T{i}" for i in range(8)]),
    st.lists(st.sampled_from([f"T{i}" for i in range(10)]), max_size=4),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(graphs)
def test_validate_never_crashes_and_layers_iff_valid(g: dict[str, list[str]]) -> None:
    problems = dag.validate(list(g), g)
    assert all(isinstance(p, str) and p for p in problems)
    if not problems:
        layers = dag.layers(g)
        placed = [t for layer in layers for t in layer]
        assert sorted(placed) == sorted(g)
        pos = {t: i for i, layer in enumerate(layers) for t in layer}
        assert all(pos[d] < pos[t] for t, ds in g.items() for d in ds)
    elif any("cycle" in p for p in problems):
        cyc = next(p for p in problems if "cycle" in p).removeprefix("dependency cycle: ").split(" -> ")
        assert cyc[0] == cyc[-1]
        assert all(cyc[i + 1] in g[cyc[i]] for i in range(len(cyc) - 1))
