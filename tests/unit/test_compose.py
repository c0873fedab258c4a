"""docker-compose.yml checked statically (no Docker engine here): valid against the Compose
specification, every service command a real `drivestream` verb, every DRIVESTREAM_*
variable one that verb reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import VERBS, build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = {
    name: svc
    for name, svc in COMPOSE["services"].items()
    if svc.get("image") == "drivestream:latest"
}


def test_compose_file_is_valid_against_the_compose_spec():
    done = subprocess.run(
        [
            Path(sys.executable).with_name("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_topology_matches_up():
    assert COMPOSE["services"]["kafka"]["image"].startswith("apache/kafka:")
    verbs = {svc["command"][0] for svc in SERVICES.values()}
    assert {"topics", "ps", "train", "serve", "replay", "report"} <= verbs
    for gpu_service in ("trainer", "inference"):
        devices = COMPOSE["services"][gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_parses_and_env_names_are_read(name, capsys):
    svc = SERVICES[name]
    verb, *args = svc["command"]
    assert verb in VERBS, f"{name}: {verb} is not a drivestream verb"
    parser = build_parser(verb)
    parser.parse_args([verb, *args])  # exits (fails the test) on an unknown flag
    with pytest.raises(SystemExit):
        parser.parse_args([verb, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for env_name in svc.get("environment", {}):
        if env_name.startswith("DRIVESTREAM_"):
            assert f"env {env_name}" in help_text, (
                f"{name}: `drivestream {verb}` ignores {env_name}"
            )
