"""A node's settings and its command line: NodeConfig (validated, from flags > MIRRORD_* > TOML), the
argument parser, and the JSON logging every node writes (mirrord.node runs the node with them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import structlog

from mirrord import config as settings
from mirrord.core.events import DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_EVENTS
from mirrord.core.types import Endpoint
from mirrord.net.client_port import ClientLimits, limits_from_settings
from mirrord.version import installed_version


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one node, from flags or a TOML file."""

    name: str
    data_dir: Path
    endpoint: Endpoint
    listen: Endpoint
    endpoint_name: str = "mirroring"
    log_size_limit: int = 1 << 30
    log_level: str = "info"
    metrics: Endpoint | None = None  # HOST:PORT of the Prometheus /metrics listener; off when None
    tls_dir: Path | None = None  # ca.crt, <name>.crt, <name>.key: mutual TLS between nodes, TLS to clients
    insecure: bool = False  # plaintext, nobody authenticated: only when asked for by name
    admin_password_file: Path | None = None  # the first start gives login sa this password
    backup_dir: Path | None = None  # BACKUP/RESTORE files live only here; None: DATA_DIR/backups
    limits: ClientLimits = ClientLimits()  # what one client may hold on the client port
    event_history_max_events: int = DEFAULT_MAX_EVENTS  # sys.database_mirroring_events (storage/events.py)
    event_history_max_age_days: int = DEFAULT_MAX_AGE_DAYS
    checkmirror_interval: int = 0  # seconds between scheduled DBCC CHECKMIRROR (mirrord/engine/checkmirror.py); 0: off
    # the pace of its hash on both partners, MB/s (0: unlimited); 16 keeps a check under 10 % of the commits
    # running beside it (benchmarks/checkmirror_bench.py: median ratio 0.93 at 16, 0.52-0.83 unlimited)
    checkmirror_rate_mb: int = 16
    page_scrub_rate_mb: int = 0  # the mirror's page scrubber (mirrord/engine/page_repair.py), MB/s; 0: off

    @property
    def backups(self) -> Path:
        """The directory BACKUP writes to and RESTORE reads from (nothing outside it)."""
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @classmethod
    def from_sources(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> "NodeConfig":
        """Merge flags > MIRRORD_* environment > TOML file (mirrord/config.py); validate every value."""
        return cls._validated(cls.merged(args, environ)[0])

    @classmethod
    def merged(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> tuple[dict, dict]:
        """(values, sources) before validation; ValueError naming the source of a bad value."""
        environ = os.environ if environ is None else environ
        file: dict[str, Any] = {}
        path = args.config or environ.get(settings.CONFIG_ENV) or None
        if path:
            with open(path, "rb") as f:
                file = tomllib.load(f)
        flags = {key: getattr(args, key, None) for key in settings.KEYS}
        values, sources = settings.merge(file, settings.from_environment(environ), flags)
        sources = {key: f"file {path}" if where == "file" else where for key, where in sources.items()}
        try:
            cls._validated(values)
        except ValueError as exc:
            named = [k for k in values if str(exc).startswith(k) or f"'{k}'" in str(exc)]
            raise ValueError(f"{exc} (from {sources[named[0]]})" if named else str(exc)) from None
        return values, sources

    @classmethod
    def _validated(cls, v: dict[str, Any]) -> "NodeConfig":
        unknown = set(v) - set(settings.KEYS)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for key in ("name", "data_dir", "endpoint", "listen"):
            if not isinstance(v.get(key), str) or not v[key]:
                raise ValueError(f"setting {key!r} is required (a non-empty string)")
        limit_mb = v.get("log_size_limit_mb", 1024)
        if not isinstance(limit_mb, int) or isinstance(limit_mb, bool) or limit_mb < 1:
            raise ValueError("log_size_limit_mb must be a positive integer")
        level = v.get("log_level", "info")
        if level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        metrics = v.get("metrics")
        if metrics is not None:
            if not isinstance(metrics, str):
                raise ValueError("metrics must be HOST:PORT for the Prometheus /metrics listener, e.g. 127.0.0.1:9187")
            try:
                metrics = Endpoint.parse(metrics)
            except ValueError as exc:
                raise ValueError(f"metrics must be HOST:PORT for the Prometheus /metrics listener: {exc}") from None
        for key in ("tls_dir", "admin_password_file"):
            if v.get(key) is not None and (not isinstance(v[key], str) or not v[key]):
                raise ValueError(f"{key} must be a path")
        if not isinstance(v.get("insecure", False), bool):
            raise ValueError("insecure must be true or false")
        backup_dir = v.get("backup_dir")
        if backup_dir is not None and (not isinstance(backup_dir, str) or not backup_dir):
            raise ValueError("backup_dir must be a directory path (BACKUP and RESTORE use only files inside it)")
        bounded = {}
        for key, least, most in (("event_history_max_events", 1, 10_000_000), ("event_history_max_age_days", 1, 36_500),
                                 ("checkmirror_interval", 0, 31 * 86400), ("checkmirror_rate_mb", 0, 100_000),
                                 ("page_scrub_rate_mb", 0, 100_000)):
            value = v.get(key)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
                    raise ValueError(f"{key} must be a whole number from {least} to {most}")
                bounded[key] = value
        config = cls(
            **bounded,
            limits=limits_from_settings(v),
            backup_dir=Path(backup_dir) if backup_dir else None,
            name=v["name"],
            data_dir=Path(v["data_dir"]),
            endpoint=Endpoint.parse(v["endpoint"]),
            listen=Endpoint.parse(v["listen"]),
            endpoint_name=v.get("endpoint_name", "mirroring"),
            log_size_limit=limit_mb << 20,
            log_level=level,
            metrics=metrics,
            tls_dir=Path(v["tls_dir"]) if v.get("tls_dir") else None,
            insecure=v.get("insecure", False),
            admin_password_file=Path(v["admin_password_file"]) if v.get("admin_password_file") else None,
        )
        if config.tls_dir is None and not config.insecure:
            raise ValueError("no tls_dir: give --tls-dir DIR (ca.crt, NAME.crt, NAME.key from 'mirrord certs'), "
                             "or --insecure to run without TLS and logins (anyone who can reach the ports gets in)")
        if config.tls_dir is not None and config.insecure:
            raise ValueError("--tls-dir and --insecure contradict each other; give one")
        return config


def configure_logging(name: str, level: str) -> None:
    """One stream of JSON lines on stderr, each with the node's name and a timestamp.

    structlog's events and stdlib logging's records (asyncio, aiohttp, any
    library) both go through one handler and structlog's ProcessorFormatter,
    so a library's warning is a JSON line like ours, never a plain text line
    in between, and a traceback is a field (`exception`), not loose lines.
    """
    numeric = getattr(logging, level.upper())

    def add_node(_logger: object, _method: str, event: dict) -> dict:
        event.setdefault("node", name)  # also on records from threads without our context
        return event

    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True), add_node]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(node=name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mirrord", description="mirrord: database mirroring node",
        epilog="Every setting also comes from the environment (MIRRORD_NAME, MIRRORD_DATA_DIR, ..., MIRRORD_METRICS) "
               "and from the TOML file (name = ..., data_dir = ...); flags win over the environment, which wins over "
               "the file. --print-config shows the result and where each value came from.")
    p.add_argument("--version", action="version", version=f"mirrord {installed_version()}")
    p.add_argument("--config", help=f"TOML file with the settings below (default ${settings.CONFIG_ENV})")
    p.add_argument("--print-config", action="store_true", dest="print_config",
                   help="print the settings as TOML, with where each came from, and exit")
    for setting in settings.SETTINGS:
        kwargs: dict[str, Any] = {"dest": setting.key, "help": f"{setting.help} (${setting.env})"}
        if setting.integer:
            kwargs["type"] = int
        if setting.boolean:
            kwargs.update(action="store_true", default=None)
        if setting.key == "log_level":
            kwargs["choices"] = ["debug", "info", "warning", "error"]
        flags = [setting.flag] + (["--http"] if setting.key == "metrics" else [])
        p.add_argument(*flags, **kwargs)
    return p.parse_args(argv)
