"""Tests for outpost.config: every mistake reported at once, with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest

from outpost.config import (
    COMMAND_LINE,
    FLAGS_ONLY,
    ConfigError,
    Problem,
    load,
    load_yaml,
    set_path,
    validate,
)
from outpost.errors import OutpostError

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Broker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    port: Port = 1883
    keepalive: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class System(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    exclude_fstypes: list[str] = msgspec.field(default_factory=lambda: ["tmpfs"])
    interval: Annotated[int, msgspec.Meta(ge=1)] = 15


class Sources(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    system: System = System()


class Agent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    site: Slug
    broker: Broker
    log_format: Literal["text", "json"] = "text"
    sources: Sources = Sources()
    labels: dict[str, str] = {}
    debug: bool = False
    note: str | None = None


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    b: list[int]


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    a: Inner


class Ladder(msgspec.Struct, forbid_unknown_fields=True):
    warning: float
    critical: float

    def __post_init__(self) -> None:
        if self.warning >= self.critical:
            raise ValueError("warning must be below critical")


class Checks(msgspec.Struct, forbid_unknown_fields=True):
    disk: Ladder


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True):
    host: str


class Http(msgspec.Struct, tag="http", forbid_unknown_fields=True):
    url: str


class Probes(msgspec.Struct):
    probes: list[Ping | Http]


GOOD = {"site": "berlin-1", "broker": {"url": "mqtt://broker:1883"}}


def problems(data: Any, type_: type[Any] = Agent) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        validate(data, type_, "agent.yaml")
    return info.value.problems


def only(data: Any, type_: type[Any] = Agent) -> Problem:
    found = problems(data, type_)
    assert len(found) == 1, found
    return found[0]


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- validate -------------------------------------------------------------------------------


def test_valid_config_round_trips_with_defaults_filled() -> None:
    agent = validate(GOOD, Agent, "agent.yaml")
    assert agent == Agent(
        site="berlin-1",
        broker=Broker(url="mqtt://broker:1883", port=1883, keepalive=30.0),
        log_format="text",
        sources=Sources(system=System(exclude_fstypes=["tmpfs"], interval=15)),
        labels={},
        debug=False,
        note=None,
    )
    assert msgspec.to_builtins(agent)["sources"]["system"]["exclude_fstypes"] == ["tmpfs"]


def test_several_mistakes_are_all_reported_with_their_paths() -> None:
    data = {
        "site": "Berlin 1",
        "broker": {"url": "mqtt://x", "port": 0, "keepalive": "soon"},
        "log_format": "xml",
        "sources": {"system": {"exclude_fstypes": ["tmpfs", "proc", 7], "intervall": 5}},
        "labels": {"room": 12},
        "debug": "yes",
    }
    assert {(p.path, p.found) for p in problems(data)} == {
        ("site", "'Berlin 1' (str)"),
        ("broker.port", "0 (int)"),
        ("broker.keepalive", "'soon' (str)"),
        ("log_format", "'xml' (str)"),
        ("sources.system.exclude_fstypes[2]", "7 (int)"),
        ("sources.system.intervall", "unknown key"),
        ("labels.room", "12 (int)"),
        ("debug", "'yes' (str)"),
    }


def test_problems_come_in_file_order() -> None:
    data = {"debug": 1, "site": "OK!", "broker": {"url": 5}}
    assert [p.path for p in problems(data)] == ["debug", "site", "broker.url"]


def test_unknown_key_is_reported_with_a_suggestion() -> None:
    problem = only({**GOOD, "log_fromat": "json"})
    assert problem.path == "log_fromat"
    assert problem.found == "unknown key"
    assert "'log_format'" in problem.expected
    assert "did you mean 'log_format'?" in problem.expected


def test_unknown_key_is_reported_even_without_forbid_unknown_fields() -> None:
    class Loose(msgspec.Struct):
        a: int = 0

    problem = only({"a": 1, "b": 2}, Loose)
    assert (problem.path, problem.found) == ("b", "unknown key")


def test_non_string_key_is_unknown() -> None:
    problem = only({**GOOD, 3: "x"})
    assert (problem.path, problem.found) == ("[3]", "unknown key")


def test_missing_required_field() -> None:
    problem = only({"site": "berlin-1", "broker": {}})
    assert problem == Problem("agent.yaml", "broker.url", "missing", "a string")


def test_missing_required_section() -> None:
    problem = only({"site": "berlin-1"})
    assert problem == Problem("agent.yaml", "broker", "missing", "a mapping")


def test_bool_is_not_an_int() -> None:
    problem = only({**GOOD, "broker": {"url": "x", "port": True}})
    assert problem.path == "broker.port"
    assert problem.found == "true (bool)"
    assert problem.expected == "an integer >= 1 and <= 65535"


def test_float_is_not_an_int() -> None:
    problem = only({**GOOD, "broker": {"url": "x", "port": 1883.0}})
    assert problem.found == "1883.0 (float)"


def test_int_is_accepted_for_float() -> None:
    agent = validate({**GOOD, "broker": {"url": "x", "keepalive": 10}}, Agent, "agent.yaml")
    assert agent.broker.keepalive == 10.0
    assert isinstance(agent.broker.keepalive, float)


def test_bool_is_not_a_float() -> None:
    problem = only({**GOOD, "broker": {"url": "x", "keepalive": False}})
    assert problem.expected == "a number > 0"


def test_meta_ge_violation() -> None:
    data = {**GOOD, "sources": {"system": {"interval": 0}}}
    problem = only(data)
    assert problem == Problem("agent.yaml", "sources.system.interval", "0 (int)", "an integer >= 1")


def test_meta_gt_violation_on_float() -> None:
    problem = only({**GOOD, "broker": {"url": "x", "keepalive": 0.0}})
    assert (problem.path, problem.expected) == ("broker.keepalive", "a number > 0")


def test_pattern_violation() -> None:
    problem = only({**GOOD, "site": "-bad"})
    assert problem.path == "site"
    assert problem.found == "'-bad' (str)"
    assert problem.expected == "a string matching ^[a-z0-9][a-z0-9-]{0,62}$"


def test_length_constraints() -> None:
    class Named(msgspec.Struct):
        name: Annotated[str, msgspec.Meta(min_length=1)]
        hosts: Annotated[list[str], msgspec.Meta(min_length=1, max_length=2)]

    found = problems({"name": "", "hosts": ["a", "b", "c"]}, Named)
    assert [(p.path, p.found, p.expected) for p in found] == [
        ("name", "'' (str)", "a non-empty string"),
        ("hosts", "a list of 3 items", "a list of 1 to 2 strings"),
    ]


def test_literal_violation() -> None:
    problem = only({**GOOD, "log_format": "xml"})
    assert problem.path == "log_format"
    assert problem.found == "'xml' (str)"
    assert problem.expected.startswith("one of ")
    assert "'text'" in problem.expected
    assert "'json'" in problem.expected


def test_literal_does_not_confuse_bool_and_int() -> None:
    class Level(msgspec.Struct):
        level: Literal[1, 2] = 1

    problem = only({"level": True}, Level)
    assert problem.found == "true (bool)"


def test_nested_list_element_error_path() -> None:
    problem = only({"a": {"b": [1, 2, "three", 4]}}, Outer)
    assert problem == Problem("agent.yaml", "a.b[2]", "'three' (str)", "an integer")


def test_list_expected_but_scalar_found() -> None:
    problem = only({"a": {"b": "1,2"}}, Outer)
    assert (problem.path, problem.expected) == ("a.b", "a list of integers")


def test_dict_value_error_path() -> None:
    problem = only({**GOOD, "labels": {"room": "a", "foo": ["x"]}})
    assert problem == Problem("agent.yaml", "labels.foo", "a list", "a string")


def test_dict_key_of_wrong_type() -> None:
    problem = only({**GOOD, "labels": {1: "x"}})
    assert problem.path == "labels[1]"
    assert problem.found == "key 1 (int)"


def test_mapping_expected_but_list_found() -> None:
    problem = only({**GOOD, "broker": ["mqtt://x"]})
    assert problem == Problem("agent.yaml", "broker", "a list", "a mapping")


def test_optional_accepts_null_and_reports_other_types() -> None:
    assert validate({**GOOD, "note": None}, Agent, "agent.yaml").note is None
    problem = only({**GOOD, "note": 5})
    assert (problem.path, problem.expected) == ("note", "a string or null")


def test_top_level_must_be_a_mapping() -> None:
    problem = only(["a"])
    assert problem == Problem("agent.yaml", "", "a list", "a mapping")


def test_tagged_union_reports_inside_the_chosen_member() -> None:
    data = {"probes": [{"type": "ping", "host": "a"}, {"type": "http", "url": 3}]}
    problem = only(data, Probes)
    assert problem.path == "probes[1].url"
    bad_tags = problems({"probes": [{"type": "smtp"}, {"url": "x"}]}, Probes)
    assert [(p.path, p.found, p.expected) for p in bad_tags] == [
        ("probes[0].type", "'smtp' (str)", "one of 'ping', 'http'"),
        ("probes[1].type", "missing", "one of 'ping', 'http'"),
    ]
    ok = validate({"probes": [{"type": "http", "url": "x"}]}, Probes, "f")
    assert ok.probes == [Http(url="x")]


def test_post_init_error_becomes_one_problem_with_its_path() -> None:
    problem = only({"disk": {"warning": 90, "critical": 80}}, Checks)
    assert problem.path == "disk"
    assert problem.found == "a mapping"
    assert "warning must be below critical" in problem.expected


def test_problem_and_error_formatting() -> None:
    first = Problem("a.yaml", "broker.port", "'x' (str)", "an integer >= 1")
    second = Problem("a.yaml", "site", "missing", "a string")
    assert str(first) == "a.yaml: broker.port: found 'x' (str), expected an integer >= 1"
    error = ConfigError([first, second])
    assert isinstance(error, OutpostError)
    assert str(error).splitlines() == [str(first), str(second)]


# --- load_yaml ------------------------------------------------------------------------------


def test_load_yaml_reads_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "site: berlin-1\nbroker:\n  url: mqtt://x\n")
    assert load_yaml(path) == {"site": "berlin-1", "broker": {"url": "mqtt://x"}}


def test_load_yaml_empty_file_is_empty_mapping(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, "# only a comment\n")) == {}


def test_load_yaml_syntax_error_mentions_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "site: berlin-1\nbroker:\n  url: [unclosed\n  port: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    [problem] = info.value.problems
    assert problem.file == str(path)
    assert "line 4" in problem.found
    assert problem.expected == "valid YAML"


def test_load_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "site: a\nbroker: {}\nsite: b\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    [problem] = info.value.problems
    assert "line 3" in problem.found
    assert "duplicate key 'site'" in problem.found


def test_load_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = "base: &b {port: 1, url: x}\nbroker:\n  <<: *b\n  port: 2\n"
    assert load_yaml(write(tmp_path, text))["broker"] == {"port": 2, "url": "x"}


def test_load_yaml_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.problems == [
        Problem(str(path), "", "no such file", "a readable YAML file"),
    ]


def test_load_yaml_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.problems == [Problem(str(path), "", "a list", "a mapping")]


# --- set_path and load ----------------------------------------------------------------------


def test_set_path_creates_mappings() -> None:
    data: dict[str, Any] = {"broker": {"port": 1}, "x": None}
    set_path(data, "broker.url", "mqtt://y")
    set_path(data, "sources.system.interval", 5)
    set_path(data, "x.y", 1)
    assert data == {
        "broker": {"port": 1, "url": "mqtt://y"},
        "x": {"y": 1},
        "sources": {"system": {"interval": 5}},
    }


def test_set_path_rejects_empty_segments() -> None:
    with pytest.raises(ValueError):
        set_path({}, "broker..url", 1)


def test_load_reports_all_problems_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "site: Berlin\nbroker:\n  url: mqtt://x\n  port: -1\nlog_format: xml\nextra: 1\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, Agent)
    assert [(p.file, p.path) for p in info.value.problems] == [
        (str(path), "site"),
        (str(path), "broker.port"),
        (str(path), "log_format"),
        (str(path), "extra"),
    ]


def test_load_applies_overrides_and_skips_none(tmp_path: Path) -> None:
    path = write(tmp_path, "site: berlin-1\nbroker:\n  url: mqtt://file\n  port: 1884\n")
    agent = load(path, Agent, {"broker.url": "mqtt://flag", "broker.port": None, "debug": True})
    assert agent.broker == Broker(url="mqtt://flag", port=1884)
    assert agent.debug is True


def test_load_reports_bad_override_against_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "site: berlin-1\nbroker:\n  url: mqtt://x\nlog_format: xml\n")
    with pytest.raises(ConfigError) as info:
        load(path, Agent, {"broker.port": "abc"})
    assert info.value.problems == [
        Problem(COMMAND_LINE, "broker.port", "'abc' (str)", "an integer >= 1 and <= 65535"),
        Problem(str(path), "log_format", "'xml' (str)", "one of 'json', 'text'"),
    ]


def test_load_without_a_file_uses_flags_only() -> None:
    agent = load(None, Agent, {"site": "berlin-1", "broker.url": "mqtt://x"})
    assert agent.broker.url == "mqtt://x"
    with pytest.raises(ConfigError) as info:
        load(None, Agent, {"site": "berlin-1"})
    assert info.value.problems == [Problem(FLAGS_ONLY, "broker", "missing", "a mapping")]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml", Agent)
    assert info.value.problems[0].found == "no such file"
