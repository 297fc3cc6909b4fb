"""The control API's routes, without HTTP: every endpoint, every error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioheart.proxy import Latency, Proxy
from trioheart.proxy._api import handle_request


def call(proxy: Proxy, method: str, path: str, body: object = None) -> tuple[int, object]:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    response = handle_request(proxy, method, path, raw)
    return response.status, json.loads(response.encode()) if response.body is not None else None


async def test_toxic_lifecycle() -> None:
    proxy = Proxy(upstream="127.0.0.1:9")
    status, body = call(
        proxy,
        "POST",
        "/toxics",
        {"type": "ws_drop", "name": "eat-pongs", "attributes": {"frames": ["pong"]}},
    )
    assert status == 201
    assert body == {
        "name": "eat-pongs",
        "type": "ws_drop",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"frames": ["pong"], "probability": 1.0},
    }
    assert call(proxy, "GET", "/toxics") == (200, [body])
    assert call(proxy, "GET", "/toxics/eat-pongs") == (200, body)
    status, changed = call(
        proxy, "POST", "/toxics/eat-pongs", {"attributes": {"probability": 0.5}, "toxicity": 0.9}
    )
    assert status == 200
    assert changed["attributes"]["probability"] == 0.5
    assert changed["toxicity"] == 0.9
    assert call(proxy, "DELETE", "/toxics/eat-pongs") == (204, None)
    assert call(proxy, "GET", "/toxics") == (200, [])


async def test_proxy_endpoint_and_reset() -> None:
    proxy = Proxy(upstream="127.0.0.1:9")
    proxy.add_toxic(Latency(latency=1))
    status, body = call(proxy, "GET", "/proxy")
    assert status == 200
    assert body["upstream"] == "127.0.0.1:9"
    assert body["enabled"] is True
    assert call(proxy, "POST", "/proxy", {"enabled": False})[1]["enabled"] is False  # type: ignore[index]
    assert not proxy.enabled
    assert call(proxy, "POST", "/reset") == (204, None)
    assert proxy.enabled
    assert proxy.toxics == ()
    assert call(proxy, "GET", "/version") == (200, {"version": "1"})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/nope", None, 404, "no endpoint '/nope'"),
        ("PUT", "/toxics", None, 405, "PUT is not allowed here; use GET or POST"),
        ("POST", "/toxics", None, 400, "needs a JSON body"),
        ("POST", "/toxics", b"{", 400, "not valid JSON"),
        ("POST", "/toxics", b"\xff", 400, "UTF-8"),
        ("POST", "/toxics", {"type": "latency", "attributes": {"latency": -1}}, 400, "latency"),
        ("POST", "/toxics", {"type": "latency", "name": "lag"}, 409, "exists already"),
        ("GET", "/toxics/missing", None, 404, "no toxic is named 'missing'"),
        ("DELETE", "/toxics/missing", None, 404, "no toxic is named 'missing'"),
        ("POST", "/toxics/lag", {"type": "stall"}, 400, "type cannot be changed"),
        ("POST", "/toxics/lag", {"attributes": {"jitter": "x"}}, 400, "jitter must be"),
        ("POST", "/proxy", {"enabled": "no"}, 400, "enabled must be true or false"),
        ("POST", "/proxy", {"listen": "1.2.3.4:5"}, 400, "only 'enabled' can be changed"),
        ("POST", "/proxy", [], 400, "must be a JSON object"),
        ("GET", "/reset", None, 405, "use POST"),
    ],
)
async def test_errors_are_clear_4xx_and_change_nothing(
    method: str, path: str, body: object, status: int, message: str
) -> None:
    proxy = Proxy(upstream="127.0.0.1:9")
    proxy.add_toxic(Latency(latency=1), name="lag")
    before = proxy.describe()
    got_status, got = call(proxy, method, path, body)
    assert got_status == status
    assert message in got["error"]
    assert got["status"] == status
    assert proxy.describe() == before


async def test_405_names_the_allowed_methods() -> None:
    response = handle_request(Proxy(upstream="127.0.0.1:9"), "PATCH", "/toxics/x", b"")
    assert response.status == 405
    assert ("Allow", "GET, POST, DELETE") in response.headers


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=30),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["latency", "nat_idle", "ws_drop", "slicer"])},
        optional={
            "attributes": st.dictionaries(
                st.sampled_from(["latency", "timeout", "frames", "average_size", "bogus"]),
                json_values,
                max_size=3,
            ),
            "stream": st.sampled_from(["upstream", "both", "x"]),
            "toxicity": json_values,
            "name": st.sampled_from(["lag", "ok", "bad name"]),
        },
    ).map(lambda v: json.dumps(v).encode()),
)


@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    path=st.sampled_from(["/proxy", "/toxics", "/toxics/lag", "/toxics/none", "/reset", "/x"]),
    body=bodies,
)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_any_4xx_leaves_the_proxy_unchanged(method: str, path: str, body: bytes) -> None:
    proxy = Proxy(upstream="127.0.0.1:9")
    proxy.add_toxic(Latency(latency=1), name="lag")
    before = proxy.describe()
    response = handle_request(proxy, method, path, body)
    assert response.status in (200, 201, 204) or 400 <= response.status < 500
    if response.status >= 400:
        assert proxy.describe() == before
        assert isinstance(response.body, dict)
        assert response.body["error"]
