"""Run a private carbon-cache (and optionally graphite-web) on loopback.

Used by the demo (``hops-stability demo``), the test suite and ``deploy/local/``.  It
starts the Debian packages ``graphite-carbon`` / ``graphite-web`` / ``gunicorn`` (see
``deploy/local/install-deps.sh``) with every directory under ``base_dir`` and the HOPS
storage schemas (30 years at 1 hour for ``hops.``, ``xFilesFactor = 0``), on free
loopback ports, and stops them by PID.  Nothing outside ``base_dir`` is touched.
"""
from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["LocalGraphite", "GraphiteNotInstalled", "free_port", "wait_for_port", "graphite_conf_text"]


class GraphiteNotInstalled(RuntimeError):
    """carbon-cache / graphite-web are not installed on this machine."""


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                  what: str = "server", log: Path | None = None) -> None:
    """Block until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on "
                               f"port {port}\n{detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def graphite_conf_text(name: str) -> str:
    """The HOPS carbon config file ``name`` shipped in the package (``carbon.conf``,
    ``storage-schemas.conf`` or ``storage-aggregation.conf``; ``deploy/graphite/`` links
    to the same files)."""
    return resources.files("stability_collector").joinpath("data", "graphite", name).read_text()


def _interpreter_of(script: str) -> str:
    """The Python that runs an installed script (its ``#!`` line)."""
    with open(script, "rb") as fh:
        first = fh.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and parts[0].endswith("/env") and len(parts) > 1:
            return shutil.which(parts[1]) or parts[1]
        if parts:
            return parts[0]
    return sys.executable


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class _Ports:
    line: int
    pickle: int
    cache_query: int
    web: int


class LocalGraphite:
    """A carbon-cache (plus graphite-web when ``web=True``) private to ``base_dir``.

    ``line_port`` etc. default to free ports; ``storage_schemas`` (text) replaces the
    shipped storage-schemas.conf.  Use as a context manager or call
    :meth:`start` / :meth:`stop`.  :meth:`stop_carbon` / :meth:`start_carbon` restart
    carbon on the same ports (to simulate an outage).
    """

    def __init__(self, base_dir: str | os.PathLike[str], web: bool = False,
                 line_port: int | None = None, web_port: int | None = None,
                 carbon_settings: dict[str, str] | None = None, storage_schemas: str | None = None):
        self.base = Path(base_dir).resolve()
        self.web = web
        self.ports = _Ports(line_port or free_port(), free_port(), free_port(), web_port or free_port())
        self.conf_dir = self.base / "conf"
        self.storage = self.base / "storage"
        self.whisper_dir = self.storage / "whisper"
        self.log_dir = self.storage / "log"
        self.carbon_settings = carbon_settings or {}
        self.storage_schemas = storage_schemas     # text replacing the shipped storage-schemas.conf
        self.carbon: subprocess.Popen | None = None
        self.webapp: subprocess.Popen | None = None
        carbon = shutil.which("carbon-cache") or (
            "/usr/bin/carbon-cache" if os.path.exists("/usr/bin/carbon-cache") else None)
        if carbon is None:
            raise GraphiteNotInstalled(
                "carbon-cache not found: install the Debian packages graphite-carbon graphite-web "
                "gunicorn (deploy/local/install-deps.sh)")
        self.carbon_exe = carbon

    # -- configuration -------------------------------------------------------------
    @property
    def line_address(self) -> str:
        return f"127.0.0.1:{self.ports.line}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.web}"

    def _write_configs(self) -> None:
        for d in (self.conf_dir, self.whisper_dir, self.log_dir / "webapp", self.storage / "lists",
                  self.base / "webconf"):
            d.mkdir(parents=True, exist_ok=True)
        # The shipped carbon.conf, with this instance's directories and loopback ports.
        overrides = {
            "STORAGE_DIR": f"{self.storage}/",
            "LOCAL_DATA_DIR": f"{self.whisper_dir}/",
            "WHITELISTS_DIR": f"{self.storage}/lists/",
            "LOG_DIR": f"{self.log_dir}/",
            "PID_DIR": f"{self.storage}/",
            "LINE_RECEIVER_INTERFACE": "127.0.0.1",
            "LINE_RECEIVER_PORT": str(self.ports.line),
            "PICKLE_RECEIVER_INTERFACE": "127.0.0.1",
            "PICKLE_RECEIVER_PORT": str(self.ports.pickle),
            "CACHE_QUERY_INTERFACE": "127.0.0.1",
            "CACHE_QUERY_PORT": str(self.ports.cache_query),
            "LOG_CREATES": "False",
            "MAX_UPDATES_PER_SECOND": "inf",   # tests read whisper right after sending
            "WHISPER_AUTOFLUSH": "True",
            "GRAPHITE_URL": self.web_url,
        }
        overrides.update(self.carbon_settings)
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # keep carbon's upper-case keys
        parser.read_string(graphite_conf_text("carbon.conf"))
        for key, value in overrides.items():
            parser.set("cache", key, value)
        with open(self.conf_dir / "carbon.conf", "w") as fh:
            parser.write(fh)
        for name in ("storage-schemas.conf", "storage-aggregation.conf"):
            (self.conf_dir / name).write_text(graphite_conf_text(name))
        if self.storage_schemas is not None:
            (self.conf_dir / "storage-schemas.conf").write_text(self.storage_schemas)
        (self.base / "webconf" / "hops_graphite_settings.py").write_text(f"""\
SECRET_KEY = 'hops-local-only'
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
TIME_ZONE = 'UTC'
DEFAULT_XFILES_FACTOR = 0
LOG_ROTATION = False
GRAPHITE_ROOT = '/usr/share/graphite-web'
STATIC_ROOT = '/usr/share/graphite-web/static'
CONF_DIR = {str(self.conf_dir)!r}
STORAGE_DIR = {str(self.storage)!r}
WHISPER_DIR = {str(self.whisper_dir)!r}
LOG_DIR = {str(self.log_dir / 'webapp')!r}
INDEX_FILE = {str(self.storage / 'index')!r}
DATABASES = {{'default': {{'NAME': {str(self.storage / 'graphite.db')!r},
                          'ENGINE': 'django.db.backends.sqlite3'}}}}
CARBONLINK_HOSTS = ['127.0.0.1:{self.ports.cache_query}:a']
TAGDB = 'graphite.tags.localdatabase.LocalDatabaseTagDB'
""")

    # -- processes -----------------------------------------------------------------
    def start(self) -> "LocalGraphite":
        self._write_configs()
        self.start_carbon()
        if self.web:
            self.start_web()
        return self

    def start_carbon(self) -> None:
        if self.carbon is not None and self.carbon.poll() is None:
            return
        out = open(self.log_dir / "carbon.stdout", "ab")
        try:
            self.carbon = subprocess.Popen(
                [self.carbon_exe, f"--config={self.conf_dir / 'carbon.conf'}",
                 f"--pidfile={self.storage / 'carbon-cache.pid'}", f"--logdir={self.log_dir}",
                 "--nodaemon", "start"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base)
        finally:
            out.close()
        wait_for_port(self.ports.line, proc=self.carbon, what="carbon-cache",
                      log=self.log_dir / "carbon.stdout")
        wait_for_port(self.ports.cache_query, proc=self.carbon, what="carbon-cache")

    def stop_carbon(self) -> None:
        _stop(self.carbon)
        self.carbon = None
        pidfile = self.storage / "carbon-cache.pid"
        if pidfile.exists():
            pidfile.unlink()

    def _web_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONPATH=str(self.base / "webconf"),
                   GRAPHITE_SETTINGS_MODULE="hops_graphite_settings",
                   DJANGO_SETTINGS_MODULE="graphite.settings")
        return env

    def start_web(self) -> None:
        python = _interpreter_of(self.carbon_exe)
        env = self._web_env()
        log = self.log_dir / "webapp" / "gunicorn.log"
        migrate = subprocess.run([python, "-m", "django", "migrate", "--run-syncdb"],
                                 env=env, cwd=self.base, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise GraphiteNotInstalled("graphite-web database setup failed (is graphite-web installed?):\n"
                                       + migrate.stderr[-2000:])
        out = open(self.log_dir / "webapp" / "gunicorn.stdout", "ab")
        try:
            self.webapp = subprocess.Popen(
                [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.ports.web}", "--workers", "2",
                 "--error-logfile", str(log), "graphite.wsgi:application"],
                env=env, cwd=self.base, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()
        wait_for_port(self.ports.web, proc=self.webapp, what="graphite-web (gunicorn)", log=log)

    def stop(self) -> None:
        _stop(self.webapp)
        self.webapp = None
        self.stop_carbon()

    def __enter__(self) -> "LocalGraphite":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading back --------------------------------------------------------------
    def whisper_path(self, metric: str) -> Path:
        return self.whisper_dir / (metric.replace(".", "/") + ".wsp")

    def wait_for_whisper(self, metrics: list[str], timeout: float = 30.0) -> None:
        """Block until every metric has a whisper file (carbon writes asynchronously)."""
        deadline = time.monotonic() + timeout
        missing = list(metrics)
        while missing and time.monotonic() < deadline:
            missing = [m for m in missing if not self.whisper_path(m).exists()]
            if missing:
                time.sleep(0.1)
        if missing:
            raise AssertionError(f"{len(missing)} metric(s) never reached whisper, e.g. {missing[:3]}")

    def render_json(self, target: str, frm: str = "-30y", until: str = "now") -> list[dict]:
        """graphite-web's ``/render?format=json`` for ``target``."""
        import json
        query = urllib.parse.urlencode({"target": target, "format": "json", "from": frm, "until": until})
        with urllib.request.urlopen(f"{self.web_url}/render?{query}", timeout=60) as resp:
            return json.load(resp)


def whisper_value_at(path: str | os.PathLike[str], timestamp: int) -> float | None:
    """The value a whisper file holds for the slot containing ``timestamp``
    (``None`` if the slot is empty).  Needs the ``whisper`` module."""
    import whisper

    step = min(a["secondsPerPoint"] for a in whisper.info(str(path))["archives"])
    (start, _end, step), values = whisper.fetch(str(path), timestamp - 2 * step, timestamp + 2 * step)
    slot = timestamp - timestamp % step
    index = (slot - start) // step
    return values[index] if 0 <= index < len(values) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m stability_collector.localgraphite``: run carbon-cache + graphite-web on
    loopback in the foreground (``deploy/local/graphite.sh``) until Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(prog="graphite.sh", description=main.__doc__)
    ap.add_argument("--dir", default=".hops-graphite", help="state directory (default .hops-graphite)")
    ap.add_argument("--line-port", type=int, default=2003, help="carbon plaintext port (default 2003)")
    ap.add_argument("--web-port", type=int, default=8080, help="graphite-web port (default 8080)")
    ap.add_argument("--no-web", action="store_true", help="carbon-cache only")
    args = ap.parse_args(argv)
    graphite = LocalGraphite(args.dir, web=not args.no_web, line_port=args.line_port, web_port=args.web_port)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with graphite:
        print(f"carbon-cache: {graphite.line_address} (plaintext), whisper files in {graphite.whisper_dir}")
        if graphite.web:
            print(f"graphite-web: {graphite.web_url}/")
        print("Ctrl-C stops both.", flush=True)
        while not stop:
            time.sleep(0.5)
            if graphite.carbon is not None and graphite.carbon.poll() is not None:
                print("carbon-cache exited; see", graphite.log_dir)
                return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
