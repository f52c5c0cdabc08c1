"""``unbroken serve`` takes its defaults from the library, not from copies.

The parsed defaults are :class:`~unbroken_server.context.ServerConfig`'s (and
the log's, the file store's, the server's address), the help text's numbers
follow them, and ``$ONEPIPE_STREAMS_PORT`` is read by one rule for the CLI
and OnePipe's embedded server alike.
"""
from __future__ import annotations

import dataclasses

import pytest

from unbroken_engine.log import LogConfig
from unbroken_engine.stores.file import DEFAULT_DATA_DIR
from unbroken_server import cli
from unbroken_server.context import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, env_port
from unbroken_server.onepipe import OnePipeError, connect


def _serve(*argv: str):
    return cli.build_parser().parse_args(["serve", *argv])


def test_parsed_defaults_are_server_config_defaults():
    args = _serve()
    defaults = ServerConfig()
    for name in cli.CONFIG_OPTIONS:
        assert getattr(args, name) == getattr(defaults, name), name
    assert cli.server_config(args) == defaults


def test_every_option_is_a_server_config_field():
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert set(cli.CONFIG_OPTIONS) <= fields


def test_options_reach_the_config():
    args = _serve("--max-body", "10", "--long-poll-timeout", "0.5", "--max-live-readers", "3")
    config = cli.server_config(args)
    assert (config.max_body, config.long_poll_timeout, config.max_live_readers) == (10, 0.5, 3)
    assert config.sse_max_duration == ServerConfig().sse_max_duration  # not an option


def test_other_defaults_are_the_library_s():
    args = _serve()
    assert args.durability == LogConfig().durability.value
    assert args.data_dir == DEFAULT_DATA_DIR
    assert args.host == DEFAULT_HOST
    assert args.port is None  # $ONEPIPE_STREAMS_PORT, else DEFAULT_PORT, when serving


def test_help_numbers_follow_the_defaults(monkeypatch, capsys):
    monkeypatch.setattr(cli, "SERVER_DEFAULTS", ServerConfig(max_body=3 << 20,
                                                             long_poll_timeout=7.5))
    assert _serve().max_body == 3 << 20
    with pytest.raises(SystemExit):
        _serve("--help")
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {3 << 20} = 3 MiB)" in out
    assert "before 204 (default: 7.5)" in out
    assert f"$ONEPIPE_STREAMS_PORT or {DEFAULT_PORT}" in out


@pytest.mark.parametrize("raw, port", [("", DEFAULT_PORT), ("0", 0), ("8123", 8123),
                                       ("65535", 65535)])
def test_env_port_accepts(raw, port):
    assert env_port({"ONEPIPE_STREAMS_PORT": raw}) == port
    assert connect(environ={"ONEPIPE_STREAMS_PORT": raw}).port == port
    assert env_port({}) == DEFAULT_PORT


@pytest.mark.parametrize("raw", ["http", "-1", "65536", " 99", "9999 ", "\u0663"])
def test_cli_and_onepipe_refuse_the_same_ports(raw, monkeypatch):
    message = f"ONEPIPE_STREAMS_PORT must be a port number, not {raw!r}"
    with pytest.raises(ValueError) as exc:
        env_port({"ONEPIPE_STREAMS_PORT": raw})
    assert str(exc.value) == message
    with pytest.raises(OnePipeError) as exc:
        connect(environ={"ONEPIPE_STREAMS_PORT": raw})
    assert str(exc.value) == message
    monkeypatch.setenv("ONEPIPE_STREAMS_PORT", raw)
    monkeypatch.setattr(cli, "raise_fd_limit", lambda needed: None)
    with pytest.raises(SystemExit) as exc:
        cli.serve_main(_serve("--store", "memory"))
    assert exc.value.code == f"unbroken: {message}"
