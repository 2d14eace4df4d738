"""The deployment bundle: compose file, Dockerfile, systemd units, example configs.
(Docker cannot run here, so the compose file is validated structurally.)"""
from __future__ import annotations

import configparser
import re
import shutil
from pathlib import Path

import yaml
from conftest import REPO

from stability_collector.config import build_config, load_config_file

DEPLOY = REPO / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _resolve(path: str) -> str:
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", path)


def test_compose_services_ports_and_mounts():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"graphite", "grafana", "stability-watch", "magickbox", "qa"}
    assert "2003:2003" in services["graphite"]["ports"] and "3000:3000" in services["grafana"]["ports"]
    assert "11112:11112" in services["magickbox"]["ports"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = _resolve(volume).split(":")[:2]
            if source.startswith("."):
                host = (DEPLOY / source).resolve()
                if "${" in volume and not host.exists():
                    continue                      # a runtime default such as ./scanners
                assert host.exists(), f"{name}: {source} does not exist"
            elif source.startswith("/"):
                assert source in ("/var/lib/hops/magickbox", "/var/run/docker.sock"), f"{name}: host path {source}"
            else:
                assert source in compose["volumes"], f"{name}: unknown volume {source}"
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    graphite_mounts = {v.split(":")[1] for v in services["graphite"]["volumes"]}
    for conf in ("carbon.conf", "storage-schemas.conf", "storage-aggregation.conf"):
        assert f"/opt/graphite/conf/{conf}" in graphite_mounts
    grafana = services["grafana"]
    assert grafana["environment"]["HOPS_GRAPHITE_URL"] == "http://graphite:80"
    mounts = dict(v.split(":")[:2][::-1] for v in grafana["volumes"])
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/hops.yaml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == "../grafana-dashboards"


def test_commands_in_compose_and_units_exist():
    scripts = set(re.findall(r'"([a-z-]+) = [a-z_.]+:main"', (REPO / "setup.py").read_text()))
    assert scripts == {"hops-stability", "magickbox", "hops-qa", "mb"}
    for service in _compose()["services"].values():
        if "command" in service:
            assert service["command"][0] in scripts
    for unit in DEPLOY.glob("systemd/*.service"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read(unit)
        assert {"Unit", "Service", "Install"} <= set(parser.sections()), unit.name
        exe = parser["Service"]["ExecStart"].split()[0]
        if exe.startswith("/opt/hops/venv/bin/"):
            assert Path(exe).name in scripts, unit.name
        else:
            assert Path(exe).exists() or shutil.which(Path(exe).name), f"{unit.name}: {exe} not installed"


def test_example_configs_are_valid():
    config = build_config(load_config_file(DEPLOY / "hops-stability.toml"))
    assert str(config.graphite) == "graphite:2003" and [s.name for s in config.scanners] == ["prisma1", "vida2"]


def test_example_qa_config_is_valid():
    from stability_collector.qa.config import load_qa_config
    config = load_qa_config(DEPLOY / "hops-qa.toml")
    assert str(config.graphite) == "graphite:2003" and config.graphite_web == "http://graphite:80"
    assert str(config.state_dir) == "/var/lib/hops/qa"


def test_dockerfile_copies_what_exists():
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_grafana_provisioning_is_consistent():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/hops-graphite.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "hops-graphite" and ds["datasources"][0]["type"] == "graphite"
    alerts = yaml.safe_load((DEPLOY / "grafana/provisioning/alerting/hops-alerts.yaml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        refs = {d["refId"] for d in rule["data"]}
        assert rule["condition"] in refs
        assert rule["data"][0]["datasourceUid"] == "hops-graphite"
