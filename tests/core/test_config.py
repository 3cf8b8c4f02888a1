"""Node settings: flags > MIRRORD_* environment > TOML file > default; --print-config; one JSON log stream."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mirrord import config, node, node_config

BASE = {"name": "a", "data_dir": "/d", "endpoint": "127.0.0.1:5022", "listen": "127.0.0.1:1433", "tls_dir": "/tls"}


def test_precedence_is_flags_then_environment_then_file_then_default():
    values, sources = config.merge({"name": "file", "log_level": "debug", "endpoint_name": "f"},
                                   {"name": "env", "log_level": "warning"}, {"name": "flag", "log_level": None})
    assert values["name"] == "flag" and sources["name"] == "--name"
    assert values["log_level"] == "warning" and sources["log_level"] == "MIRRORD_LOG_LEVEL"
    assert values["endpoint_name"] == "f" and sources["endpoint_name"] == "file"
    assert values["log_size_limit_mb"] == 1024 and sources["log_size_limit_mb"] == "default"
    assert "metrics" not in values  # off unless set somewhere


def test_every_setting_has_one_name_in_each_place():
    for setting in config.SETTINGS:
        assert setting.env == "MIRRORD_" + setting.key.upper()
        assert setting.flag == "--" + setting.key.replace("_", "-")
    args = node_config.parse_args([])
    assert all(hasattr(args, key) for key in config.KEYS)


def test_environment_values_are_parsed_and_others_ignored():
    env = {"MIRRORD_LOG_SIZE_LIMIT_MB": " 64 ", "MIRRORD_METRICS": "", "MIRRORD_TEST_FIRST_IP": "71", "MIRRORD_NAME": "n"}
    assert config.from_environment(env) == {"log_size_limit_mb": 64, "name": "n"}  # "" is unset
    with pytest.raises(ValueError, match="MIRRORD_LOG_SIZE_LIMIT_MB must be a whole number, got 'x'"):
        config.from_environment({"MIRRORD_LOG_SIZE_LIMIT_MB": "x"})


def test_node_config_from_all_three_sources(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text('name = "file"\ndata_dir = "/data"\nendpoint = "h:5022"\nlisten = "h:1433"\nlog_size_limit_mb = 8\n'
                    'tls_dir = "/tls"\n')
    env = {"MIRRORD_CONFIG": str(toml), "MIRRORD_NAME": "env", "MIRRORD_METRICS": "h:8008"}
    cfg = node_config.NodeConfig.from_sources(node_config.parse_args(["--listen", "h:1"]), env)
    assert (cfg.name, cfg.listen.port, cfg.log_size_limit, str(cfg.metrics)) == ("env", 1, 8 << 20, "tcp://h:8008")
    values, sources = node_config.NodeConfig.merged(node_config.parse_args([]), env)
    assert sources["data_dir"] == f"file {toml}" and sources["name"] == "MIRRORD_NAME"


def test_a_bad_value_says_where_it_came_from(tmp_path):
    env = {f"MIRRORD_{k.upper()}": v for k, v in BASE.items()} | {"MIRRORD_LOG_LEVEL": "loud"}
    with pytest.raises(ValueError, match=r"log_level must be .* \(from MIRRORD_LOG_LEVEL\)"):
        node_config.NodeConfig.from_sources(node_config.parse_args([]), env)
    with pytest.raises(ValueError, match="unknown setting"):
        toml = tmp_path / "bad.toml"
        toml.write_text('nmae = "typo"\n')
        node_config.NodeConfig.from_sources(node_config.parse_args(["--config", str(toml)]), {})


def test_print_config_shows_values_and_sources(capsys, monkeypatch):
    for key, value in BASE.items():
        monkeypatch.setenv(f"MIRRORD_{key.upper()}", value)
    monkeypatch.delenv("MIRRORD_CONFIG", raising=False)
    monkeypatch.delenv("MIRRORD_METRICS", raising=False)
    assert node.main(["--print-config", "--name", "b"]) == 0
    out = capsys.readouterr().out
    assert 'name = "b"    # --name' in out and 'listen = "127.0.0.1:1433"    # MIRRORD_LISTEN' in out
    assert "log_size_limit_mb = 1024    # default" in out and "# metrics = ..." in out
    monkeypatch.delenv("MIRRORD_NAME")
    assert node.main(["--print-config"]) == 2
    assert "setting 'name' is required" in capsys.readouterr().err


LOGGING_SCRIPT = """
import logging, structlog
from mirrord.node_config import configure_logging
configure_logging("n1", "info")
structlog.get_logger().info("ours", a=1)
logging.getLogger("asyncio").warning("from the %s module", "stdlib")
logging.getLogger("x").debug("below the level")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("lib").exception("a library's error")
"""


def test_stdlib_logging_goes_through_structlog_as_one_json_stream():
    done = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert [(e["event"], e["level"], e["node"]) for e in events] == [
        ("ours", "info", "n1"), ("from the stdlib module", "warning", "n1"), ("a library's error", "error", "n1")]
    assert events[1]["logger"] == "asyncio" and "ZeroDivisionError" in events[2]["exception"]
    assert done.stdout == ""


SYSTEMD = node.Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def test_the_systemd_unit_and_example_make_a_valid_node():
    unit = (SYSTEMD / "mirrord.service").read_text()
    env = dict(line.split("=", 1)[1].split("=", 1) for line in unit.splitlines() if line.startswith("Environment="))
    env["MIRRORD_CONFIG"] = str(SYSTEMD / "mirrord.toml.example")
    cfg = node_config.NodeConfig.from_sources(node_config.parse_args([]), env)
    assert (cfg.name, str(cfg.data_dir), str(cfg.metrics)) == ("node-a", "/var/lib/mirrord", "tcp://10.0.0.1:8008")


@pytest.mark.skipif(node.shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    unit = (SYSTEMD / "mirrord.service").read_text().replace("/opt/mirrord/bin/mirrord", sys.executable)
    (tmp_path / "mirrord.service").write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mirrord.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "mirrord.service" not in done.stderr, done.stderr


def test_event_history_and_checkmirror_settings_are_bounded():
    env = {f"MIRRORD_{k.upper()}": v for k, v in BASE.items()}
    cfg = node_config.NodeConfig.from_sources(node_config.parse_args([]), env)
    assert (cfg.event_history_max_events, cfg.event_history_max_age_days, cfg.checkmirror_interval, cfg.checkmirror_rate_mb) \
        == (10_000, 30, 0, 16)
    assert cfg.page_scrub_rate_mb == 0  # the scrubber is off unless asked for
    assert node_config.NodeConfig.from_sources(node_config.parse_args(["--page-scrub-rate-mb", "20"]), env).page_scrub_rate_mb == 20
    cfg = node_config.NodeConfig.from_sources(node_config.parse_args(["--event-history-max-events", "50", "--checkmirror-interval", "3600",
                                                        "--checkmirror-rate-mb", "32"]), env | {"MIRRORD_EVENT_HISTORY_MAX_AGE_DAYS": "7"})
    assert (cfg.event_history_max_events, cfg.event_history_max_age_days, cfg.checkmirror_interval, cfg.checkmirror_rate_mb) \
        == (50, 7, 3600, 32)
    for flag, value, where in (("--event-history-max-events", "0", "event_history_max_events must be a whole number from 1"),
                               ("--event-history-max-age-days", "-1", "event_history_max_age_days must be"),
                               ("--checkmirror-interval", "-5", "checkmirror_interval must be a whole number from 0"),
                               ("--checkmirror-rate-mb", "100001", "checkmirror_rate_mb must be"),
                               ("--page-scrub-rate-mb", "-1", "page_scrub_rate_mb must be a whole number from 0")):
        with pytest.raises(ValueError, match=f"{where}.*\\(from {flag}\\)"):
            node_config.NodeConfig.from_sources(node_config.parse_args([flag, value]), env)


def test_the_loop_handler_quiets_a_tls_connection_reset_and_passes_everything_else_on():
    # found by the nemesis: uvloop's SSL protocol reporting a reset connection with a traceback
    from mirrord.node import loop_exception

    seen = []

    class Loop:
        def default_exception_handler(self, context):
            seen.append(context["message"])

    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    loop_exception(Loop(), {"message": "Fatal error on SSL protocol\nprotocol: <x>", "exception": closed})
    loop_exception(Loop(), {"message": "Fatal error on SSL protocol", "exception": ConnectionResetError()})
    assert seen == []
    loop_exception(Loop(), {"message": "Fatal error on SSL protocol", "exception": RuntimeError("something else")})
    loop_exception(Loop(), {"message": "Task exception was never retrieved", "exception": closed})
    assert seen == ["Fatal error on SSL protocol", "Task exception was never retrieved"]

