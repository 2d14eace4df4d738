"""magickbox node configuration: embedded defaults, a TOML or YAML file, then flags.

Validated at start-up; every error names the key (``dicom.port: expected an integer
1-65535, found 'x'``).  All keys with their defaults::

    node_name = "<host name>"          # metric path node: hops.magickbox.<node_name>.
    data_dir = "<required: --data-dir>"
    buckets_dir = "<data_dir>/buckets"
    classify_rules = "<data_dir>/classifyRules.json"   # used if it exists

    [dicom]
    host = "0.0.0.0"
    port = 11112
    ae_title = "MAGICKBOX"             # the node's own AE title (also accepted as called AE)
    extra_ae_titles = []               # more called AE titles to accept (no bucket)
    quiet_seconds = 5.0                # study complete: associations ended + this long quiet
    max_pdu = 131072                   # bytes, 4096-16777216; longer P-DATA-TF PDUs are aborted
    uid_grammar = "strict"             # or "lenient": allow leading zeros in UID components
    fsync = true                       # durable writes (turn off only for throw-away tests)
    spool_threshold_mb = 16            # larger data sets are spilled to disk while received
    spool_memory_mb = 256              # all data sets being received together: beyond, to disk
    replace = "same-sender"            # different data under an archived SOP Instance UID:
                                       # "same-sender" (replaces only if the archived copy came
                                       # from the same calling AE), "never", "any"
    association_timeout = 10           # s for TLS handshake + complete A-ASSOCIATE-RQ
    idle_timeout = 120                 # s without traffic on an association, then A-ABORT
    max_associations = 64              # associations at once (then A-ASSOCIATE-RJ local limit)
    max_pending_connections = 32       # connections still without an A-ASSOCIATE-RQ
    max_connections_per_address = 16   # connections from one peer address
    receivers = 1                      # receiving processes sharing the DICOM port (1-64);
                                       # the limits above then hold per process
    [dicom.access.<AETitle>]           # optional allow-list for one bucket; for the node's own
                                       # and extra AE titles: who may store (C-ECHO: anyone)
    calling_ae_titles = ["SCANNER1"]
    caller_ips = ["10.0.0.0/8"]
    whole_study_callers = []           # callers whose jobs may get the whole archived study
                                       # (for a bucket whose info.json asks: "run": {"input": "study"})
    [dicom.tls]                        # optional DICOM TLS
    cert = "node.pem"
    key = "node.key"
    ca = "ca.pem"                      # with require_client_cert = true: mutual TLS
    require_client_cert = false

    [http]
    host = "127.0.0.1"
    port = 8000
    max_upload_mb = 4096               # largest study zip accepted by POST /api/jobs (mb push)
    tls_cert = ""                      # PEM certificate and key: serve HTTPS (or use a reverse proxy)
    tls_key = ""

    [graphite]
    address = ""                       # HOST:PORT of carbon; empty: no node metrics
    interval = 10                      # seconds between metric reports

    [gearman]
    servers = []                       # ["gearmand-host:4730"]; empty: embedded job server
    resubmit_after = 60                # re-submit a job nobody took for this long (gearmand only)

    [worker]
    enabled = true                     # run an embedded worker in this node
    buckets = []                       # AE titles it runs; empty: all enabled buckets
    engine = ""                        # Docker-API URL (default $DOCKER_HOST or podman's socket)

    [measures]                         # buckets' measures.json -> Graphite (magickbox.results.measure_stage)
    timezone = ""                      # IANA zone of naive acquisition times; "" = this host's zone
    subject = "station"                # subject key in hops.measures.<bucket>.<key>: station | serial | alias | hash
    alias = ""                         # the key for subject = "alias"
    salt = ""                          # secret for subject = "hash" (required then)
    serial_aliases = {}                # DeviceSerialNumber -> alias (subject = "serial")
    interval = 1                       # seconds between passes over newly finished jobs
    retry_interval = 10                # seconds between delivery attempts while carbon is down
    [routing]                          # sending results (rules: <data_dir>/routing.json)
    me = ""                            # $me in routing.json (default dicom.host, or 127.0.0.1)
    port = 0                           # $port in routing.json (default the DICOM port)
    senders = 2                        # sends running at once (one association each)
    timeout = 30                       # s to wait for a peer's answer during a send
    [routing.known_aes]                # AE title -> "HOST:PORT": $caller and AETitleTo without IP/PORT
    PACS = "10.0.0.5:104"
"""
from __future__ import annotations

import ipaddress
import json
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stability_collector.core.errors import ConfigError
from stability_collector.core.graphite import GraphiteAddress, sanitize_node
from stability_collector.core.values import parse_bool, parse_number, parse_string

from .layout import DataLayout
from .model import AE_TITLE
from .results.measure_stage import MeasuresConfig, parse_measures_config

__all__ = ["NodeConfig", "DicomConfig", "RoutingConfig", "TLSConfig", "AccessRule", "load_node_config", "ConfigError"]



@dataclass(frozen=True)
class AccessRule:
    """``[dicom.access.<AE>]``: who may call an AE title (empty lists: anyone), and who may
    get the whole archived study in a job of that bucket."""

    calling_ae_titles: tuple[str, ...] = ()
    caller_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    whole_study_callers: tuple[str, ...] = ()

    def allows(self, calling_ae: str, ip: str) -> bool:
        if self.calling_ae_titles and calling_ae.strip() not in self.calling_ae_titles:
            return False
        if self.caller_networks:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            if not any(addr in net for net in self.caller_networks):
                return False
        return True


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class DicomConfig:
    host: str = "0.0.0.0"
    port: int = 11112
    ae_title: str = "MAGICKBOX"
    extra_ae_titles: tuple[str, ...] = ()
    quiet_seconds: float = 5.0
    max_pdu: int = 131072
    uid_grammar: str = "strict"
    fsync: bool = True
    spool_threshold_mb: float = 16.0
    spool_memory_mb: float = 256.0
    replace: str = "same-sender"
    association_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_associations: int = 64
    max_pending_connections: int = 32
    max_connections_per_address: int = 16
    receivers: int = 1
    access: Mapping[str, AccessRule] = field(default_factory=dict)
    tls: TLSConfig | None = None

    @property
    def own_ae_titles(self) -> tuple[str, ...]:
        """AE titles that archive without a bucket: the node's own and the extra ones."""
        return (self.ae_title, *self.extra_ae_titles)


@dataclass(frozen=True)
class RoutingConfig:
    """``[routing]``: the node's address for ``$me``/``$port`` (empty/0: from ``[dicom]``),
    the table of known AE titles (``$caller``, return to sender), how many sends run at
    once and the per-send network timeout (seconds)."""
    me: str = ""
    port: int = 0
    senders: int = 2
    timeout: float = 30.0
    known_aes: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    node_name: str = field(default_factory=lambda: sanitize_node(socket.gethostname().split(".")[0]))
    buckets_dir: Path | None = None
    classify_rules: Path | None = None
    dicom: DicomConfig = field(default_factory=DicomConfig)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http_max_upload_mb: int = 4096
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    graphite: GraphiteAddress | None = None
    graphite_interval: float = 10.0
    gearman_servers: tuple[tuple[str, int], ...] = ()
    resubmit_after: float = 60.0
    worker_enabled: bool = True
    worker_buckets: tuple[str, ...] = ()
    engine_url: str | None = None
    measures: MeasuresConfig = field(default_factory=MeasuresConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    @property
    def layout(self) -> DataLayout:
        """Every path of the node's data directory (:mod:`magickbox.layout`)."""
        return DataLayout.of(self.data_dir, self.buckets_dir, self.classify_rules)


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ConfigError(key, f"expected an integer {lo}-{hi}, found {value!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(key, f"expected an integer {lo}-{hi}, found {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    return parse_bool(key, value, strict=True)


def _ae(key: str, value: Any) -> str:
    text = parse_string(key, value).strip()
    if not AE_TITLE.fullmatch(text) or "\\" in text:
        raise ConfigError(key, f"not a DICOM AE title (1-16 printable characters, no backslash): {value!r}")
    return text


def _list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, found {value!r}")
    return value


def _table(key: str, value: Any, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, found {value!r}")
    unknown = set(value) - known
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{key}.{name}" if key else name, f"unknown setting; known: {', '.join(sorted(known))}")
    return value


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid JSON: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path}: expected a table of settings at the top level")
    return data


def build_node_config(values: Mapping[str, Any], base_dir: Path | None = None) -> NodeConfig:
    """Validate a settings mapping (file content with flags merged in)."""
    top = _table("", values, {"node_name", "data_dir", "buckets_dir", "classify_rules", "dicom", "http",
                              "graphite", "gearman", "worker", "measures", "routing"})
    base = base_dir or Path.cwd()

    def path(key: str, value: Any) -> Path:
        p = Path(parse_string(key, value)).expanduser()
        return p if p.is_absolute() else base / p

    if "data_dir" not in top:
        raise ConfigError("data_dir", "missing: give --data-dir DIR or set data_dir in the config file")
    data_dir = path("data_dir", top["data_dir"])
    node_name = sanitize_node(parse_string("node_name", top["node_name"])) if "node_name" in top else None
    d = _table("dicom", top.get("dicom", {}), {"host", "port", "ae_title", "extra_ae_titles", "quiet_seconds",
                                                "max_pdu", "uid_grammar", "fsync", "spool_threshold_mb", "access",
                                                "tls", "spool_memory_mb", "replace", "association_timeout",
                                                "idle_timeout", "max_associations", "max_pending_connections",
                                                "max_connections_per_address", "receivers"})
    access = {}
    for ae, rule in _table("dicom.access", d.get("access", {}), set(d.get("access", {}) or {})).items():
        key = f"dicom.access.{ae}"
        rule = _table(key, rule, {"calling_ae_titles", "caller_ips", "whole_study_callers"})
        nets = []
        for i, net in enumerate(_list(f"{key}.caller_ips", rule.get("caller_ips", []))):
            try:
                nets.append(ipaddress.ip_network(parse_string(f"{key}.caller_ips", net), strict=False))
            except ValueError:
                raise ConfigError(f"{key}.caller_ips", f"not an IP address or network: {net!r}") from None
        titles = tuple(_ae(f"{key}.calling_ae_titles", t) for t in _list(f"{key}.calling_ae_titles",
                                                                          rule.get("calling_ae_titles", [])))
        whole = tuple(_ae(f"{key}.whole_study_callers", t) for t in _list(f"{key}.whole_study_callers",
                                                                           rule.get("whole_study_callers", [])))
        access[_ae("dicom.access", ae)] = AccessRule(titles, tuple(nets), whole)
    tls = None
    if "tls" in d:
        t = _table("dicom.tls", d["tls"], {"cert", "key", "ca", "require_client_cert"})
        for k in ("cert", "key"):
            if k not in t:
                raise ConfigError(f"dicom.tls.{k}", "missing (both cert and key are needed for TLS)")
        tls = TLSConfig(path("dicom.tls.cert", t["cert"]), path("dicom.tls.key", t["key"]),
                        path("dicom.tls.ca", t["ca"]) if "ca" in t else None,
                        _bool("dicom.tls.require_client_cert", t.get("require_client_cert", False)))
        for k, p in (("cert", tls.cert), ("key", tls.key), ("ca", tls.ca)):
            if p is not None and not p.is_file():
                raise ConfigError(f"dicom.tls.{k}", f"file not found: {p}")
        if tls.require_client_cert and tls.ca is None:
            raise ConfigError("dicom.tls.ca", "needed when require_client_cert = true")
    replace_policy = parse_string("dicom.replace", d.get("replace", "same-sender"))
    if replace_policy not in ("same-sender", "never", "any"):
        raise ConfigError("dicom.replace", f"expected 'same-sender', 'never' or 'any', found {replace_policy!r}")
    grammar = parse_string("dicom.uid_grammar", d.get("uid_grammar", "strict"))
    if grammar not in ("strict", "lenient"):
        raise ConfigError("dicom.uid_grammar", f"expected 'strict' or 'lenient', found {grammar!r}")
    dicom = DicomConfig(
        host=parse_string("dicom.host", d.get("host", "0.0.0.0")),
        port=_int("dicom.port", d.get("port", 11112), 0, 65535),
        ae_title=_ae("dicom.ae_title", d.get("ae_title", "MAGICKBOX")),
        extra_ae_titles=tuple(_ae("dicom.extra_ae_titles", a) for a in _list("dicom.extra_ae_titles",
                                                                              d.get("extra_ae_titles", []))),
        quiet_seconds=parse_number("dicom.quiet_seconds", d.get("quiet_seconds", 5.0), 0.0),
        max_pdu=_int("dicom.max_pdu", d.get("max_pdu", 131072), 4096, 16 * 1024 * 1024),
        uid_grammar=grammar,
        fsync=_bool("dicom.fsync", d.get("fsync", True)),
        spool_threshold_mb=parse_number("dicom.spool_threshold_mb", d.get("spool_threshold_mb", 16.0), 0.0),
        spool_memory_mb=parse_number("dicom.spool_memory_mb", d.get("spool_memory_mb", 256.0), 0.0),
        replace=replace_policy,
        association_timeout=parse_number("dicom.association_timeout", d.get("association_timeout", 10.0), 0.5),
        idle_timeout=parse_number("dicom.idle_timeout", d.get("idle_timeout", 120.0), 1.0),
        max_associations=_int("dicom.max_associations", d.get("max_associations", 64), 1, 1000),
        max_pending_connections=_int("dicom.max_pending_connections", d.get("max_pending_connections", 32), 1,
                                     10000),
        max_connections_per_address=_int("dicom.max_connections_per_address",
                                         d.get("max_connections_per_address", 16), 1, 10000),
        receivers=_int("dicom.receivers", d.get("receivers", 1), 1, 64),
        access=access,
        tls=tls,
    )
    h = _table("http", top.get("http", {}), {"host", "port", "max_upload_mb", "tls_cert", "tls_key"})
    http_tls = {}
    for k in ("tls_cert", "tls_key"):
        if h.get(k):
            http_tls[k] = path(f"http.{k}", h[k])
            if not http_tls[k].is_file():
                raise ConfigError(f"http.{k}", f"file not found: {http_tls[k]}")
    if len(http_tls) == 1:
        missing = ({"tls_cert", "tls_key"} - set(http_tls)).pop()
        raise ConfigError(f"http.{missing}", "missing (both tls_cert and tls_key are needed for HTTPS)")
    g = _table("graphite", top.get("graphite", {}), {"address", "interval"})
    address = parse_string("graphite.address", g.get("address", ""))
    gm = _table("gearman", top.get("gearman", {}), {"servers", "resubmit_after"})
    servers = []
    for spec in _list("gearman.servers", gm.get("servers", [])):
        try:
            server = GraphiteAddress.parse(parse_string("gearman.servers", spec), "gearman.servers")
        except ConfigError:
            raise ConfigError("gearman.servers", f"expected HOST:PORT, found {spec!r}") from None
        servers.append((server.host, server.port if ":" in spec else 4730))
    wk = _table("worker", top.get("worker", {}), {"enabled", "buckets", "engine"})
    kwargs: dict[str, Any] = {
        "gearman_servers": tuple(servers),
        "resubmit_after": parse_number("gearman.resubmit_after", gm.get("resubmit_after", 60.0), 1.0),
        "worker_enabled": _bool("worker.enabled", wk.get("enabled", True)),
        "worker_buckets": tuple(_ae("worker.buckets", b) for b in _list("worker.buckets", wk.get("buckets", []))),
        "engine_url": parse_string("worker.engine", wk.get("engine", "")) or None,
        "measures": parse_measures_config(top.get("measures")),
    }
    kwargs["routing"] = _routing_config(top.get("routing", {}))
    if node_name:
        kwargs["node_name"] = node_name
    return NodeConfig(
        data_dir=data_dir,
        buckets_dir=path("buckets_dir", top["buckets_dir"]) if "buckets_dir" in top else None,
        classify_rules=path("classify_rules", top["classify_rules"]) if "classify_rules" in top else None,
        dicom=dicom,
        http_host=parse_string("http.host", h.get("host", "127.0.0.1")),
        http_port=_int("http.port", h.get("port", 8000), 0, 65535),
        http_max_upload_mb=_int("http.max_upload_mb", h.get("max_upload_mb", 4096), 1, 1 << 24),
        http_tls_cert=http_tls.get("tls_cert"),
        http_tls_key=http_tls.get("tls_key"),
        graphite=GraphiteAddress.parse(address, "graphite.address") if address else None,
        graphite_interval=parse_number("graphite.interval", g.get("interval", 10.0), 0.5),
        **kwargs,
    )


def parse_host_port(key: str, value: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ConfigError naming ``key``."""
    host, _, port = parse_string(key, value).strip().rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected HOST:PORT, found {value!r}")
    return host.strip("[]"), int(port)


def _routing_config(value: Any) -> RoutingConfig:
    r = _table("routing", value, {"me", "port", "senders", "timeout", "known_aes"})
    raw_known = r.get("known_aes", {})
    if not isinstance(raw_known, dict):
        raise ConfigError("routing.known_aes", f"expected a table of AE = \"HOST:PORT\", found {raw_known!r}")
    known = _table("routing.known_aes", raw_known, set(raw_known))
    return RoutingConfig(
        me=parse_string("routing.me", r.get("me", "")).strip(),
        port=_int("routing.port", r.get("port", 0), 0, 65535),
        senders=_int("routing.senders", r.get("senders", 2), 1, 32),
        timeout=parse_number("routing.timeout", r.get("timeout", 30.0), 1.0),
        known_aes={_ae("routing.known_aes", ae): parse_host_port(f"routing.known_aes.{ae}", addr)
                   for ae, addr in known.items()})


def load_node_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Defaults ← file ← ``overrides`` (dotted keys like ``"dicom.port"`` from flags)."""
    values: dict[str, Any] = load_file(path) if path else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    base = Path(path).resolve().parent if path else Path.cwd()
    if overrides and overrides.get("data_dir") is not None:
        values["data_dir"] = str(Path(overrides["data_dir"]).resolve())
    return build_node_config(values, base)

