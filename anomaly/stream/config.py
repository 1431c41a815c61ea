"""One typed configuration for ``anomaly serve``: file < ``ANOMALY_*`` environment < flags.

Sources, lowest precedence first:

1. a TOML or YAML file (``--config`` / ``ANOMALY_CONFIG``): top-level keys are the field names
   below (``-`` or ``_``), plus the tables ``kafka`` (settings passed to both kafka-python
   clients), ``consumer`` and ``producer`` (passed to one of them);
2. environment variables ``ANOMALY_<FIELD>`` (lists comma-separated) and
   ``ANOMALY_KAFKA__<SETTING>`` / ``ANOMALY_CONSUMER__<SETTING>`` / ``ANOMALY_PRODUCER__<SETTING>``;
3. command-line flags.

The SASL password comes only from ``ANOMALY_SASL_PASSWORD``, a ``sasl_password_file`` or the
file's ``kafka`` table, never from a flag (flags show in ``ps``). It is held in a ``Secret``
whose repr is redacted, and ``ServeConfig``'s repr redacts every secret-looking setting, so
logging the configuration never leaks it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from anomaly.errors import AnomalyError
from anomaly.stream.records import DEFAULT_MAX_BYTES

# The metrics/health server's bind address and port. Here, not in anomaly.stream.metrics:
# every CLI call builds serve's options from this module, and importing the metrics module
# (prometheus_client, http.server, NumPy) cost each of them ~0.2 s.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108

ENV_PREFIX = "ANOMALY_"
CONFIG_ENV = "ANOMALY_CONFIG"
PASSTHROUGH_TABLES = ("kafka", "consumer", "producer")
_SECRET_WORDS = ("password", "secret", "token", "credential", "private_key")
_REQUIRED = ("bundle", "input_topic", "alert_topic", "dlq_topic", "group")
PRODUCER_CLIENTS = ("confluent", "kafka-python")
SECRET_ONLY_SETTINGS = frozenset({"sasl_password"})  # never a flag: flags show in `ps`


class ConfigError(AnomalyError):
    """The serve configuration is incomplete or invalid."""


class Secret:
    """A string that never shows itself in repr/str (and hence in logs or tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that needs it (the Kafka client)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_secret_key(key: str) -> bool:
    """Whether a setting name looks like it holds a credential."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(part) for part in value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(value: Any) -> Any:
        return None if value is None or value == "" else convert(value)

    return inner


def _secret(value: Any) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


def _setting(value: str) -> Any:
    """Best-effort typing of a pass-through setting given as an environment string."""
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return value


def _opt(default: Any, convert: Callable[[Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"convert": convert, "doc": doc})


@dataclass(frozen=True, repr=False)
class ServeConfig:
    """Everything ``anomaly serve`` needs; build it with ``load_serve_config``."""

    bundle: Path = _opt(None, _optional(Path), "model bundle directory")
    input_topic: str = _opt(None, _optional(str), "topic of JSON records to score")
    alert_topic: str = _opt(None, _optional(str), "topic for one alert per anomalous record")
    dlq_topic: str = _opt(None, _optional(str), "dead-letter topic for invalid records")
    group: str = _opt(None, _optional(str), "consumer group id")
    scores_topic: str | None = _opt(None, _optional(str), "optional topic for every record's score")
    bootstrap_servers: str = _opt("127.0.0.1:9092", str, "Kafka bootstrap servers, comma-separated")
    max_batch: int = _opt(500, int, "most records per scored micro-batch")
    max_wait_ms: int = _opt(50, int, "longest wait to fill a micro-batch")
    commit_interval_ms: int = _opt(1000, int, "flush + commit at least this often")
    max_in_flight: int = _opt(
        20000, int, "records handled but not yet committed before a forced flush"
    )
    delivery_timeout_s: float = _opt(
        30.0, float, "longest wait for deliveries before the input is paused (capped, see docs)"
    )
    max_delivery_failures: int = _opt(
        5, int, "checkpoints in a row that may fail to deliver before exiting 3"
    )
    exactly_once: bool = _opt(
        False, _as_bool, "transactional output: alerts/scores/DLQ commit with the offsets"
    )
    transactional_id: str | None = _opt(
        None, _optional(str), "with exactly_once: unique per member (default anomaly-GROUP-HOST)"
    )
    producer_client: str = _opt(
        "confluent",
        str,
        "output producer: confluent (librdkafka) | kafka-python; exactly_once always uses "
        "kafka-python",
    )
    liveness_timeout_s: float = _opt(
        60.0, float, "/healthz answers 503 when the loop has not turned for this long"
    )
    alert_fields: tuple[str, ...] = _opt((), _as_list, "input fields copied into alerts")
    extra_fields: tuple[str, ...] = _opt((), _as_list, "non-feature input fields to tolerate")
    top_features: int = _opt(5, int, "contributing features listed per alert")
    blas_threads: int = _opt(
        1, int, "BLAS threads while serving (the bank search); 0 keeps the library's own count"
    )
    max_record_bytes: int = _opt(DEFAULT_MAX_BYTES, int, "larger records are dead-lettered")
    threshold_refresh_s: float = _opt(2.0, float, "how often the bundle manifest is re-read")
    require_signature: bool = _opt(
        False, _as_bool, "refuse a bundle that is not signed (anomaly sign) or does not verify"
    )
    public_key: Path | None = _opt(
        None, _optional(Path), "trusted public key (PEM) the bundle's signature must match"
    )
    drift_window_records: int = _opt(
        10000, int, "scored records the drift gauges summarise (rolling window)"
    )
    shadow_bundle: Path | None = _opt(
        None,
        _optional(Path),
        "challenger bundle that scores every record beside the live one, never alerting",
    )
    shadow_scores_topic: str | None = _opt(
        None, _optional(str), "topic for the shadow bundle's score messages (score schema)"
    )
    shadow_window_records: int = _opt(
        10000, int, "scored records the shadow comparison summarises (rolling window)"
    )
    shadow_report: Path | None = _opt(
        None,
        _optional(Path),
        "shadow comparison file for anomaly promote (default: SHADOW_BUNDLE.shadow.json)",
    )
    auto_offset_reset: str = _opt("earliest", str, "where a new group starts: earliest | latest")
    session_timeout_ms: int = _opt(10000, int, "consumer group session timeout")
    heartbeat_interval_ms: int = _opt(1000, int, "consumer heartbeat interval")
    max_poll_interval_ms: int = _opt(
        300000, int, "longest gap between polls before leaving the group"
    )
    metrics_host: str = _opt(DEFAULT_HOST, str, "bind address of the metrics/health server")
    metrics_port: int = _opt(DEFAULT_PORT, int, "port of the metrics/health server (0 = any)")
    log_format: str = _opt("text", str, "text | json")
    log_level: str = _opt("INFO", str, "DEBUG | INFO | WARNING | ERROR")
    security_protocol: str = _opt("PLAINTEXT", str, "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL")
    sasl_mechanism: str | None = _opt(None, _optional(str), "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512")
    sasl_username: str | None = _opt(None, _optional(str), "SASL user name")
    sasl_password: Secret | None = _opt(
        None, _optional(_secret), "SASL password (env or file only)"
    )
    sasl_password_file: Path | None = _opt(None, _optional(Path), "file holding the SASL password")
    ssl_cafile: Path | None = _opt(None, _optional(Path), "CA bundle for SSL")
    ssl_certfile: Path | None = _opt(None, _optional(Path), "client certificate for SSL")
    ssl_keyfile: Path | None = _opt(None, _optional(Path), "client key for SSL")
    kafka: Mapping[str, Any] = field(default_factory=dict, metadata={"doc": "both clients"})
    consumer: Mapping[str, Any] = field(default_factory=dict, metadata={"doc": "consumer only"})
    producer: Mapping[str, Any] = field(default_factory=dict, metadata={"doc": "producer only"})

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in PASSTHROUGH_TABLES:
                value = {k: ("***" if is_secret_key(k) else v) for k, v in (value or {}).items()}
            elif isinstance(value, Secret):
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"ServeConfig({', '.join(parts)})"

    __str__ = __repr__

    @property
    def flush_timeout_s(self) -> float:
        """Longest a checkpoint (or a send into a full buffer) blocks the loop: the delivery
        timeout, capped at a third of ``max_poll_interval_ms`` so that the loop polls (and
        the member stays in its group) while the output is down."""
        return max(0.1, min(self.delivery_timeout_s, self.max_poll_interval_ms / 3000))

    @property
    def shadow_report_path(self) -> Path | None:
        """Where serve writes the shadow comparison: beside the shadow bundle, not in it (a
        file added to a signed bundle would stop it verifying)."""
        if self.shadow_bundle is None:
            return None
        return self.shadow_report or shadow_report_for(self.shadow_bundle)

    def transaction_id(self) -> str:
        """The producer's transactional id: the setting, or ``anomaly-<group>-<hostname>``
        (stable across restarts of one member, so a restart fences and aborts the
        transaction its predecessor left open)."""
        return self.transactional_id or f"anomaly-{self.group}-{socket.gethostname()}"

    def password(self) -> str | None:
        """The SASL password from the environment/file setting or the password file."""
        if self.sasl_password is not None:
            return self.sasl_password.reveal()
        if self.sasl_password_file is not None:
            try:
                return self.sasl_password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the SASL password file {self.sasl_password_file}: {exc.strerror}"
                ) from None
        return None

    def client_settings(self) -> dict[str, Any]:
        """Settings shared by the consumer and the producer (connection and security)."""
        settings: dict[str, Any] = {
            "bootstrap_servers": [
                s.strip() for s in self.bootstrap_servers.split(",") if s.strip()
            ],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            settings["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            settings["sasl_plain_username"] = self.sasl_username
        password = self.password()
        if password is not None:
            settings["sasl_plain_password"] = password
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                settings[name] = str(value)
        settings.update(self.kafka or {})
        return settings

    def consumer_settings(self) -> dict[str, Any]:
        """kafka-python KafkaConsumer keyword arguments (only the ones it accepts)."""
        from kafka import KafkaConsumer

        settings = {
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "max_poll_records": self.max_batch,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "fetch_max_wait_ms": max(1, min(self.max_wait_ms, 500)),
        }
        if self.exactly_once:
            settings["isolation_level"] = "read_committed"
        settings.update(_accepted(self.client_settings(), KafkaConsumer.DEFAULT_CONFIG))
        settings.update(self.consumer or {})
        return settings

    def producer_settings(self) -> dict[str, Any]:
        """kafka-python KafkaProducer keyword arguments (only the ones it accepts)."""
        from kafka import KafkaProducer

        settings = {
            "acks": "all",
            "linger_ms": 5,
            # A micro-batch's outputs go to the producer in a burst; kafka-python's 16 KiB
            # default closes a batch (and wakes its sender thread) every ~20 score messages,
            # which doubled the cost of each send here (bench/stream.py, docs/streaming.md).
            # Half of a broker's default 1 MiB message limit, with room for the batch header.
            "batch_size": 512 * 1024,
            "retries": 5,
            "max_block_ms": int(self.flush_timeout_s * 1000),
            "bootstrap_timeout_ms": int(self.flush_timeout_s * 1000),
        }
        if self.exactly_once:
            settings["transactional_id"] = self.transaction_id()
            settings["enable_idempotence"] = True
        settings.update(_accepted(self.client_settings(), KafkaProducer.DEFAULT_CONFIG))
        settings.update(self.producer or {})
        return settings

    @property
    def confluent_producer(self) -> bool:
        """Whether the outputs go through confluent-kafka's producer: the default, except
        with ``exactly_once``, whose transaction must carry the kafka-python consumer's
        offsets (``send_offsets_to_transaction`` takes that consumer's group metadata)."""
        return self.producer_client == "confluent" and not self.exactly_once

    def confluent_producer_settings(self) -> dict[str, Any]:
        """librdkafka settings for confluent-kafka's Producer, translated from
        ``producer_settings()`` so that one ``producer:`` table (kafka-python names, or
        librdkafka's dotted names as they are) configures either client."""
        settings = {
            # kafka-python's default: a retried send is never written twice
            "enable.idempotence": True,
            # kafka-python's default; librdkafka's is 300 s (docs/streaming.md, "Delivery")
            "delivery.timeout.ms": 120000,
            # kafka-python's (and Java's) murmur2 of the key: a key keeps its partition
            # whichever client sends it; librdkafka's own default hashes with CRC32
            "partitioner": "murmur2_random",
        }
        unknown = []
        for key, value in self.producer_settings().items():
            if "." in key:
                settings[key] = value
            elif key in _LIBRDKAFKA_NAMES:
                name, convert = _LIBRDKAFKA_NAMES[key]
                if name:
                    settings[name] = convert(value)
            else:
                unknown.append(key)
        if unknown:
            raise ConfigError(
                f"producer setting(s) {', '.join(sorted(unknown))} have no confluent-kafka "
                "equivalent here: give librdkafka's dotted name, or producer_client = "
                '"kafka-python"'
            )
        return settings


def _same(value: Any) -> Any:
    return value


def _servers(value: Any) -> str:
    return value if isinstance(value, str) else ",".join(value)


# kafka-python producer setting -> (librdkafka name, conversion); no name: serve does that
# part itself (max_block_ms: a full queue is retried for the flush timeout) or librdkafka
# needs nothing (it negotiates the API version)
_LIBRDKAFKA_NAMES: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "bootstrap_servers": ("bootstrap.servers", _servers),
    "client_id": ("client.id", _same),
    "acks": ("acks", str),
    "linger_ms": ("linger.ms", _same),
    "batch_size": ("batch.size", _same),
    "retries": ("retries", _same),
    "retry_backoff_ms": ("retry.backoff.ms", _same),
    "delivery_timeout_ms": ("delivery.timeout.ms", _same),
    "request_timeout_ms": ("request.timeout.ms", _same),
    "compression_type": ("compression.type", lambda v: v or "none"),
    "enable_idempotence": ("enable.idempotence", _same),
    "max_in_flight_requests_per_connection": ("max.in.flight.requests.per.connection", _same),
    "max_request_size": ("message.max.bytes", _same),
    "buffer_memory": ("queue.buffering.max.kbytes", lambda v: max(1, int(v) // 1024)),
    "metadata_max_age_ms": ("metadata.max.age.ms", _same),
    "connections_max_idle_ms": ("connections.max.idle.ms", _same),
    "security_protocol": ("security.protocol", _same),
    "sasl_mechanism": ("sasl.mechanisms", _same),
    "sasl_plain_username": ("sasl.username", _same),
    "sasl_plain_password": ("sasl.password", _same),
    "ssl_cafile": ("ssl.ca.location", _same),
    "ssl_certfile": ("ssl.certificate.location", _same),
    "ssl_keyfile": ("ssl.key.location", _same),
    "ssl_password": ("ssl.key.password", _same),
    "ssl_check_hostname": (
        "ssl.endpoint.identification.algorithm",
        lambda v: "https" if v else "none",
    ),
    "max_block_ms": (None, _same),
    "bootstrap_timeout_ms": (None, _same),
    "api_version": (None, _same),
    "api_version_auto_timeout_ms": (None, _same),
}


def shadow_report_for(bundle: Path) -> Path:
    """The default shadow comparison file of a challenger: ``DIR.shadow.json`` beside it."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}.shadow.json"


def _accepted(settings: Mapping[str, Any], known: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in known}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw) or {}
        else:
            raise ConfigError(f"the config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"the config file {path} is not valid: {exc}") from None
    except ImportError:
        raise ConfigError("YAML config files need PyYAML: pip install pyyaml") from None
    except Exception as exc:  # yaml.YAMLError lives in an optional module
        raise ConfigError(f"the config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must hold a table of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(ServeConfig)} - set(PASSTHROUGH_TABLES)
    values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        table, sep, setting = rest.partition("__")
        if sep and table in PASSTHROUGH_TABLES and setting:
            values.setdefault(table, {})[setting] = _setting(value)
        elif rest in names:
            values[rest] = value
    return values


def load_serve_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | str | None = None,
) -> ServeConfig:
    """Merge file < environment < flags into a validated ServeConfig.

    ``flags`` values of None mean "not given". ``config_file`` defaults to ``ANOMALY_CONFIG``.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    path = config_file or env.get(CONFIG_ENV)
    merged: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {t: {} for t in PASSTHROUGH_TABLES}
    known = {f.name: f for f in dataclasses.fields(ServeConfig)}
    for source in (_read_file(Path(path)) if path else {}, _from_env(env), flags):
        for key, value in source.items():
            if key in PASSTHROUGH_TABLES:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{key!r} must be a table of Kafka client settings")
                tables[key].update({str(k).replace("-", "_"): v for k, v in value.items()})
            elif key in known:
                merged[key] = value
            else:
                raise ConfigError(f"unknown setting {key!r}")
    if "sasl_password" in flags:
        raise ConfigError("give the SASL password through ANOMALY_SASL_PASSWORD or a file")
    values: dict[str, Any] = dict(tables)
    for key, value in merged.items():
        try:
            values[key] = known[key].metadata["convert"](value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {key!r}: {exc}") from None
    config = ServeConfig(**values)
    _validate(config)
    return config


def _validate(config: ServeConfig) -> None:
    missing = [name for name in _REQUIRED if getattr(config, name) in (None, "")]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"missing required setting(s): {flags} (or ANOMALY_* / config file)")
    if config.max_batch < 1 or config.max_wait_ms < 0 or config.max_in_flight < config.max_batch:
        raise ConfigError("need max_batch >= 1, max_wait_ms >= 0 and max_in_flight >= max_batch")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError("metrics_port must be within 0..65535")
    if config.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("auto_offset_reset must be 'earliest' or 'latest'")
    if config.sasl_password is not None and config.sasl_password_file is not None:
        raise ConfigError("give the SASL password through the environment or a file, not both")
    if config.exactly_once and "bootstrap_servers" in (config.producer or {}):
        # The offsets commit inside the producer's transaction, on the producer's cluster.
        raise ConfigError(
            "exactly_once needs the outputs on the input's cluster (no producer.bootstrap_servers)"
        )
    if config.producer_client not in PRODUCER_CLIENTS:
        raise ConfigError(f"producer_client must be one of {', '.join(PRODUCER_CLIENTS)}")
    if config.max_delivery_failures < 1:
        raise ConfigError("max_delivery_failures must be at least 1")
    if config.blas_threads < 0:
        raise ConfigError("blas_threads must be 0 (the library's own count) or more")
    if config.liveness_timeout_s <= config.flush_timeout_s:
        # A loop waiting out a flush is alive: /healthz must not fail it for that.
        raise ConfigError(
            f"liveness_timeout_s must exceed the flush timeout ({config.flush_timeout_s:g} s: "
            "delivery_timeout_s capped at a third of max_poll_interval_ms)"
        )
    if config.dlq_topic == config.input_topic or config.alert_topic == config.input_topic:
        raise ConfigError("the alert and dead-letter topics must differ from the input topic")
    if config.shadow_bundle is None:
        given = [n for n in ("shadow_scores_topic", "shadow_report") if getattr(config, n)]
        if given:
            raise ConfigError(f"{given[0]} needs shadow_bundle (--shadow-bundle)")
    elif config.shadow_scores_topic and config.shadow_scores_topic in (
        config.input_topic,
        config.alert_topic,
        config.dlq_topic,
        config.scores_topic,
    ):
        raise ConfigError("the shadow scores topic must differ from every other topic")
    if config.shadow_window_records < 1:
        raise ConfigError("shadow_window_records must be at least 1")


class SettingHelp(NamedTuple):
    """One setting as help texts show it."""

    name: str
    doc: str
    default: Any
    metavar: str  # what the value looks like: INTEGER, SECONDS, PATH, A,B,... or TEXT
    required: bool


def _metavar(name: str, annotation: str) -> str:
    kind = annotation.replace(" | None", "")
    if kind == "bool":
        return ""
    if kind == "int":
        return "MS" if name.endswith("_ms") else "INTEGER"
    if kind == "float":
        return "SECONDS" if name.endswith("_s") else "NUMBER"
    if kind == "Path":
        return "PATH"
    if kind.startswith("tuple"):
        return "A,B,..."
    return "TEXT"


def describe_settings() -> list[SettingHelp]:
    """Every setting with its documentation, default, value shape and whether it is
    required (by flag, ANOMALY_* variable or config file), for help texts and docs."""
    return [
        SettingHelp(
            f.name,
            f.metadata.get("doc", ""),
            f.default,
            _metavar(f.name, str(f.type)),
            f.name in _REQUIRED,
        )
        for f in dataclasses.fields(ServeConfig)
        if f.name not in PASSTHROUGH_TABLES
    ]
