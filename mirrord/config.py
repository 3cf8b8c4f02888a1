"""Where a node's settings come from: flags, MIRRORD_* environment variables, a TOML file.

One precedence, for every setting: a flag wins over the environment, which
wins over the file, which wins over the default. Each setting has one name in
all three places: TOML `log_size_limit_mb`, environment
`MIRRORD_LOG_SIZE_LIMIT_MB`, flag `--log-size-limit-mb`. The file itself is
`--config` or `MIRRORD_CONFIG`. Environment variables set to "" count as
unset; other MIRRORD_* variables (the tests' MIRRORD_TEST_FIRST_IP...) are not
settings and are ignored.

`merge` is pure (dicts in, values and where each came from out), so
`mirrord --print-config` can show the result with its sources, and NodeConfig
validates it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Setting:
    """One setting: its TOML key, and whether it is a whole number."""

    key: str
    help: str
    integer: bool = False
    default: Any = None
    boolean: bool = False  # a flag without a value; true/false in TOML; 1/true/yes or 0/false/no in the environment

    @property
    def env(self) -> str:
        return "MIRRORD_" + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS = (
    Setting("name", "node name, shown in logs and status"),
    Setting("data_dir", "directory for databases, logs and metadata"),
    Setting("endpoint", "mirroring endpoint HOST:PORT (node to node)"),
    Setting("listen", "client listener HOST:PORT (mirrorctl and applications)"),
    Setting("endpoint_name", "name of the endpoint for ALTER ENDPOINT", default="mirroring"),
    Setting("log_size_limit_mb", "log size at which writes are refused", integer=True, default=1024),
    Setting("log_level", "debug, info, warning or error", default="info"),
    Setting("metrics", "serve HTTP on HOST:PORT: /metrics, /principal?db=X, /mirror?db=X, /health, /status (off when unset)"),
    Setting("event_history_max_events", "events sys.database_mirroring_events keeps (default 10000)", integer=True),
    Setting("event_history_max_age_days", "days sys.database_mirroring_events keeps an event (default 30)", integer=True),
    Setting("checkmirror_interval", "seconds between scheduled DBCC CHECKMIRROR of each principal database (0: off, the default)",
            integer=True),
    Setting("checkmirror_rate_mb", "MB of pages a second DBCC CHECKMIRROR hashes on each partner (0: unlimited; default 16)",
            integer=True),
    Setting("page_scrub_rate_mb", "MB of pages a second the page scrubber reads, on both partners (the mirror's pages "
            "against their checksums, the principal's against SQLite's file format), repairing damaged ones from the "
            "partner (0: off, the default)", integer=True),
    Setting("backup_dir", "the only directory BACKUP writes to and RESTORE reads from (default DATA_DIR/backups)"),
    # what one client may hold on the client port (net/client_port.py ClientLimits)
    Setting("max_clients", "client connections served at once (default 256)", integer=True),
    Setting("client_idle_timeout", "seconds a client may stay silent between statements (default 600)", integer=True),
    Setting("client_frame_deadline", "seconds for a client frame to arrive whole once begun (default 10)", integer=True),
    Setting("client_max_frame_kb", "largest client frame in KiB (default 4096)", integer=True),
    Setting("max_result_mb", "largest result a statement may build, in MiB of memory (default 64)", integer=True),
    Setting("statement_timeout_ms", "default STATEMENT_TIMEOUT of a connection in ms (default 60000)", integer=True),
    Setting("idle_transaction_timeout", "seconds a silent client may hold an open transaction (default 60)", integer=True),
    Setting("lock_timeout_ms", "default LOCK_TIMEOUT: ms a writer waits for a database's write lock (default 10000)",
            integer=True),
    Setting("tls_dir", "ca.crt, NAME.crt, NAME.key (mirrord certs): mutual TLS between nodes, TLS and logins for clients"),
    Setting("insecure", "run without TLS and without logins: anyone who can reach the ports gets in", boolean=True),
    Setting("admin_password_file", "first start only: the password of login sa (else MIRRORD_ADMIN_PASSWORD)"),
)
KEYS = tuple(s.key for s in SETTINGS)
CONFIG_ENV = "MIRRORD_CONFIG"


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment gives (MIRRORD_<KEY>); ValueError for a malformed number."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = environ.get(setting.env)
        if text is None or text == "":
            continue
        if setting.integer:
            try:
                values[setting.key] = int(text.strip())
            except ValueError:
                raise ValueError(f"{setting.env} must be a whole number, got {text!r}") from None
        elif setting.boolean:
            word = text.strip().lower()
            if word not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"{setting.env} must be 1/true/yes or 0/false/no, got {text!r}")
            values[setting.key] = word in ("1", "true", "yes")
        else:
            values[setting.key] = text
    return values


def merge(file: Mapping[str, Any], env: Mapping[str, Any], flags: Mapping[str, Any]) -> tuple[dict, dict]:
    """(values, sources): flags > environment > file > default; sources name where each value came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in set(file) - set(KEYS):  # unknown keys of the file: kept, so validation names them
        values[key], sources[key] = file[key], "file"
    for setting in SETTINGS:
        for layer, where in ((flags, setting.flag), (env, setting.env), (file, "file")):
            if layer.get(setting.key) is not None:
                values[setting.key], sources[setting.key] = layer[setting.key], where
                break
        else:
            if setting.default is not None:
                values[setting.key], sources[setting.key] = setting.default, "default"
    return values, sources


def render_toml(values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """The settings as a TOML file (usable as --config), each line saying where its value came from."""
    lines = []
    for setting in SETTINGS:
        value = values.get(setting.key)
        if value is None:
            lines.append(f"# {setting.key} = ...    # not set: {setting.help}")
        else:
            text = str(value) if setting.integer else str(value).lower() if setting.boolean else json.dumps(str(value))
            lines.append(f"{setting.key} = {text}    # {sources.get(setting.key, 'default')}")
    return "\n".join(lines) + "\n"
