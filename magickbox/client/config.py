"""``mb``'s configuration: the machines (URL + token each), which are active, and the
sender name, in ``<config dir>/config.json`` (directory 0700, file 0600).

The config dir is ``$MB_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/mb``, else
``~/.config/mb`` (``%APPDATA%\\mb`` on Windows).
"""
from __future__ import annotations

import json
import os
import re
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["Machine", "Config", "config_dir", "ConfigProblem"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ConfigProblem(Exception):
    """A config file that cannot be used, or a bad name or URL (message for the user)."""


def config_dir() -> Path:
    if os.environ.get("MB_CONFIG_DIR"):
        return Path(os.environ["MB_CONFIG_DIR"])
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "mb"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mb"


@dataclass
class Machine:
    name: str
    url: str
    token: str
    active: bool = True


@dataclass
class Config:
    machines: list[Machine] = field(default_factory=list)
    sender: str = ""
    path: Path = field(default_factory=lambda: config_dir() / "config.json", repr=False)

    @classmethod
    def load(cls, directory: Path | None = None) -> "Config":
        path = (directory or config_dir()) / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, ValueError) as exc:
            raise ConfigProblem(f"{path}: cannot read the configuration ({exc})") from None
        try:
            machines = [Machine(str(m["name"]), str(m["url"]), str(m["token"]), bool(m.get("active", True)))
                        for m in data.get("machines", [])]
        except (KeyError, TypeError, AttributeError):
            raise ConfigProblem(f"{path}: 'machines' must be a list of {{name, url, token}}") from None
        return cls(machines, str(data.get("sender", "")), path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.path.parent, 0o700)
        except OSError:
            pass
        tmp = self.path.with_name(f".config.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"sender": self.sender, "machines": [asdict(m) for m in self.machines]}, fh, indent=1)
        os.replace(tmp, self.path)
        os.chmod(self.path, 0o600)

    def find(self, key: str) -> Machine | None:
        url = normalize_url(key) if "://" in key else None
        return next((m for m in self.machines if m.name == key or (url and m.url == url)), None)

    def active(self, only: str | None = None) -> list[Machine]:
        if only:
            machine = self.find(only)
            if machine is None:
                raise ConfigProblem(f"no machine {only!r} (mb machines list)")
            return [machine]
        return [m for m in self.machines if m.active]


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ConfigProblem(f"not an http(s) URL: {url!r} (like http://magickbox.example.org:8000)")
    return url


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigProblem(f"machine name must be letters, digits, _ . - (up to 64), not {name!r}")
    return name
