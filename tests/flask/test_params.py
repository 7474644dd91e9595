"""Robyn's QueryParams (geo_ws.flask.params)."""

from __future__ import annotations

from geo_ws.flask.params import QueryParams


def test_get_returns_the_last_value_and_get_first_the_first() -> None:
    params = QueryParams("a=1&a=2&b=x")
    assert params.get("a") == "2"
    assert params.get_first("a") == "1"
    assert params.get_all("a") == ["1", "2"]


def test_missing_keys_give_none_or_the_default() -> None:
    params = QueryParams("a=1")
    assert params.get("zzz") is None
    assert params.get("zzz", "fallback") == "fallback"
    assert params.get_first("zzz") is None
    assert params.get_all("zzz") is None


def test_decoding_keeps_blank_values_like_parse_qsl() -> None:
    params = QueryParams("empty=&flag&space=a+b&pct=%C3%A9%20z")
    assert params.get("empty") == ""
    assert params.get("flag") == ""
    assert params.get("space") == "a b"
    assert params.get("pct") == "é z"


def test_container_protocol() -> None:
    params = QueryParams("a=1&b=2&a=3")
    assert params.contains("a") and "b" in params and "c" not in params
    assert not params.empty() and QueryParams("").empty()
    assert params.to_dict() == {"a": ["1", "3"], "b": ["2"]}
    assert list(params.keys()) == ["a", "b"]
    assert list(params.values()) == [["1", "3"], ["2"]]
    assert list(params.items()) == [("a", ["1", "3"]), ("b", ["2"])]
    assert len(params) == 2 and list(params) == ["a", "b"]


def test_to_dict_is_a_copy() -> None:
    params = QueryParams("a=1")
    params.to_dict()["a"].append("2")
    assert params.get_all("a") == ["1"]
