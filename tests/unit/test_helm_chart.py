"""The Helm chart (deploy/helm/drivestream) and the Strimzi example (deploy/strimzi), checked
offline: rendered by Helm's own template engine (helm-python-sdk: Helm's Go SDK in-process,
no helm binary, no cluster), every manifest valid against the Kubernetes JSON schemas
(kubernetes-validate, strict) or, for custom resources, the structural schemas in
tests/schemas/crds; KEDA never scales serve past the partitions of `sensors`; every
DRIVESTREAM_* variable is one the container's verb reads."""

from __future__ import annotations

import argparse
import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference.metrics import MetricsServer, ServeMetrics
from pipeline.cli import VERBS, build_parser
from schemas.config import add_config_arguments
from schemas.kafka import settings as schemas_kafka
from schemas.signing import load_or_create_private_key, public_key_path, read_public_keys
from schemas.topics import default_topics
from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "drivestream"
CRD_SCHEMAS = ROOT / "tests" / "schemas" / "crds"
STRIMZI = ROOT / "deploy" / "strimzi"
# the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "strimzi-scram-tls": yaml.safe_load(
        (ROOT / "deploy" / "helm" / "examples" / "strimzi-scram-tls.yaml").read_text()
    ),
    "mtls-torchrun-job": {
        "kafka": {
            "securityProtocol": "SSL",
            "partitions": 3,
            "topicPrefix": "fleet-a.",
            "tls": {
                "caSecret": {"name": "kafka-ca"},
                "clientCertSecret": {"name": "drivestream-client"},
            },
        },
        "trainer": {"kind": "job", "nprocPerNode": 2},
        "serve": {"autoscaling": {"maxReplicas": 12}, "env": {"DRIVESTREAM_MAX_BATCH": 32}},
        "signing": {"extraTrustedKeys": ["AAAA", "BBBB"]},
    },
    "no-autoscaling": {"serve": {"autoscaling": {"enabled": False}, "replicas": 2}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="drivestream", namespace="drivestream")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = VALUE_SETS[request.param]
    return merged(values), render(values)


def crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    group_version = doc["apiVersion"].replace("/", "_")
    path = CRD_SCHEMAS / f"{group_version}_{doc['kind']}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate(doc: dict[str, Any]) -> None:
    """Against the Kubernetes schemas (strict: no unknown field), or a CRD's structural one."""
    schema = crd_schema(doc)
    if schema is not None:
        jsonschema.Draft7Validator(schema).validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet"):
        return [doc["spec"]["template"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    return [
        (tpl["spec"], c)
        for doc in docs
        for tpl in pod_templates(doc)
        for c in tpl["spec"]["containers"]
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def one(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"{kind} of {component}: {len(found)}"
    return found[0]


def test_chart_lints_without_warnings():
    report = helm.lint(CHART, strict=True)
    assert not report["errors"], report
    assert all(m["severity"] < 2 for m in report["messages"]), report["messages"]


def test_values_schema_rejects_a_bad_security_protocol():
    with pytest.raises(helm.HelmError, match="securityProtocol"):
        render({"kafka": {"securityProtocol": "TLS"}})


def test_sasl_without_a_password_secret_fails_to_render():
    with pytest.raises(helm.HelmError, match="passwordSecret"):
        render(
            {
                "kafka": {
                    "securityProtocol": "SASL_SSL",
                    "sasl": {"mechanism": "PLAIN", "username": "drivestream"},
                }
            }
        )


def test_every_manifest_validates_against_its_schema(rendered):
    _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        validate(doc)
        if doc["kind"] == "PyTorchJob":  # its pod templates against the real PodTemplateSpec
            for tpl in pod_templates(doc):
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "worker"},
                    "template": tpl,
                }
                validate(pod_template)


def test_a_misplaced_field_fails_validation():
    """The validation has teeth: strict built-in schemas and closed CRD specs."""
    docs = render({})
    deployment = one(docs, "Deployment", "serve")
    deployment["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    job = one(docs, "PyTorchJob", "trainer")
    job["spec"]["elasticPolicy"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(job)


def test_keda_max_replicas_never_exceed_the_sensors_partitions(rendered):
    values, docs = rendered
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    if not values["serve"]["autoscaling"]["enabled"]:
        assert not scaled
        return
    (so,) = scaled
    partitions = values["kafka"]["partitions"]
    assert 1 <= so["spec"]["maxReplicaCount"] <= partitions
    serve = one(docs, "Deployment", "serve")
    assert so["spec"]["scaleTargetRef"]["name"] == serve["metadata"]["name"]
    assert "replicas" not in serve["spec"], "KEDA owns the replica count"
    env = env_of(serve["spec"]["template"]["spec"]["containers"][0])
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == values["kafka"]["topicPrefix"] + "sensors"
    assert meta["consumerGroup"] == env["DRIVESTREAM_GROUP_ID"]
    assert meta["bootstrapServers"] == env["DRIVESTREAM_BOOTSTRAP"]
    if values["kafka"]["securityProtocol"] != "PLAINTEXT":
        auth = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
        ref = auth[trigger["authenticationRef"]["name"]]
        params = {r["parameter"] for r in ref["spec"]["secretTargetRef"]}
        assert {"sasl", "tls"} <= params
        modes = next(d for d in docs if d["kind"] == "Secret")["stringData"]
        assert modes["sasl"] in ("none", "plaintext", "scram_sha256", "scram_sha512")
        assert modes["tls"] in ("enable", "disable")


def test_maxreplicas_above_partitions_is_capped():
    docs = render({"kafka": {"partitions": 4}, "serve": {"autoscaling": {"maxReplicas": 64}}})
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert so["spec"]["maxReplicaCount"] == 4


def kafka_env_names(monkeypatch) -> set[str]:
    """The security variables KafkaSettings.from_env really reads (recorded, not listed)."""
    seen: set[str] = set()

    class Recording(dict):
        def get(self, key, default=None):
            seen.add(key)
            return default

    monkeypatch.setattr(schemas_kafka.os, "environ", Recording())
    schemas_kafka.KafkaSettings.from_env()
    monkeypatch.undo()
    assert "DRIVESTREAM_SECURITY_PROTOCOL" in seen
    return seen


def parser_for(container: dict[str, Any]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The argument parser the container's process uses, and the argv it gets."""
    command, args = container.get("command", []), container.get("args", [])
    if command == ["torchrun"]:  # the PyTorchJob: torchrun -m trainer.worker
        assert args == ["-m", "trainer.worker"]
        parser = argparse.ArgumentParser(prog="python -m trainer.worker")
        add_config_arguments(parser, TrainConfig)
        return parser, []
    assert not command, "the image's entry point is `drivestream`"
    verb = args[0]
    assert verb in VERBS, f"{verb} is not a drivestream verb"
    return build_parser(verb), args


def test_every_drivestream_variable_is_one_the_verb_reads(rendered, capsys, monkeypatch):
    _, docs = rendered
    security = kafka_env_names(monkeypatch)
    for _, container in containers(docs):
        parser, argv = parser_for(container)
        parser.parse_args(argv)  # exits (fails the test) on an unknown flag
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        for name in env_of(container):
            if name.startswith("DRIVESTREAM_"):
                assert f"env {name}" in help_text or name in security, (
                    f"{container['name']} ({' '.join(argv) or 'trainer.worker'}) ignores {name}"
                )


def test_files_named_in_the_environment_are_mounted(rendered):
    """Every *FILE / key path a variable names lies in a volume mounted into that container."""
    _, docs = rendered
    for pod, container in containers(docs):
        env = env_of(container)
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        paths = [
            v
            for k, v in env.items()
            if isinstance(v, str) and (k.endswith(("FILE", "FILES", "_KEY"))) and v
        ]
        for path in (p for value in paths for p in value.split(",")):
            parent, filename = os.path.split(path)
            assert parent in mounts, f"{container['name']}: {path} is not on a mounted volume"
            secret = volumes[mounts[parent]].get("secret")
            if secret and "items" in secret:
                assert filename in {i["path"] for i in secret["items"]}, path


def test_ps_signing_key_reaches_serve_as_its_public_half(rendered):
    values, docs = rendered
    ps_pod = one(docs, "Deployment", "ps")["spec"]["template"]["spec"]
    serve_pod = one(docs, "Deployment", "serve")["spec"]["template"]["spec"]
    key_path = env_of(ps_pod["containers"][0])["DRIVESTREAM_SIGNING_KEY"]
    trusted = env_of(serve_pod["containers"][0])["DRIVESTREAM_TRUSTED_KEY_FILES"]

    def secret_items(pod, path):
        mount = next(
            m
            for m in pod["containers"][0]["volumeMounts"]
            if m["mountPath"] == os.path.dirname(path)
        )
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        return volume["secret"]["secretName"], {
            i["path"]: i["key"] for i in volume["secret"]["items"]
        }

    ps_secret, ps_items = secret_items(ps_pod, key_path)
    serve_secret, serve_items = secret_items(serve_pod, trusted)
    signing = values["signing"]
    assert ps_secret == serve_secret == signing["existingSecret"]
    # ps finds its public key beside the private one, so it never writes to the Secret
    assert public_key_path(key_path).name in ps_items
    assert ps_items[os.path.basename(key_path)] == signing["privateKeyKey"]
    # serve mounts the public key only
    assert serve_items == {os.path.basename(trusted): signing["publicKeyKey"]}


def test_the_documented_key_pair_is_one_ps_and_serve_accept(tmp_path):
    """docs/KUBERNETES.md's one-time step (openssl genpkey ed25519 + pkey -pubout: PKCS#8 and
    SubjectPublicKeyInfo PEM) on a read-only Secret-like directory: ps loads it without
    writing, serve trusts the public half."""
    key = Ed25519PrivateKey.generate()
    secret = tmp_path / "signing"
    secret.mkdir()
    (secret / "ps.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (secret / "ps.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    secret.chmod(0o500)
    try:
        loaded = load_or_create_private_key(secret / "ps.key")
        (trusted,) = read_public_keys(secret / "ps.pub")
    finally:
        secret.chmod(0o700)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert trusted.public_bytes(*raw) == loaded.public_key().public_bytes(*raw)
    assert sorted(p.name for p in secret.iterdir()) == ["ps.key", "ps.pub"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_probes_and_scrape_annotations_hit_the_metrics_server():
    """The probe path and port and the Prometheus annotations, against serve's real server."""
    docs = render({})
    pod = one(docs, "Deployment", "serve")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    assert env["DRIVESTREAM_METRICS_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(env["DRIVESTREAM_METRICS_PORT"])
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    server = MetricsServer(ServeMetrics(), lambda: {"ok": True}, "127.0.0.1", free_port())
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "metrics"
            with urllib.request.urlopen(base + get["path"], timeout=5) as resp:
                assert resp.status == 200 and json.load(resp)["ok"] is True
        with urllib.request.urlopen(base + annotations["prometheus.io/path"], timeout=5) as resp:
            assert b"drivestream_inference_model_version" in resp.read()
    finally:
        server.stop()


def test_trainer_kinds(rendered):
    values, docs = rendered
    t = values["trainer"]
    if t["kind"] == "pytorchjob":
        job = one(docs, "PyTorchJob", "trainer")
        elastic = job["spec"]["elasticPolicy"]
        assert elastic["rdzvBackend"] == "c10d"
        assert (elastic["minReplicas"], elastic["maxReplicas"]) == (
            t["minReplicas"],
            t["maxReplicas"],
        )
        assert job["spec"]["nprocPerNode"] == str(t["nprocPerNode"])
        assert not [d for d in docs if d["kind"] == "Job" and "trainer" in d["metadata"]["name"]]
    else:
        job = one(docs, "Job", "trainer")
        env = env_of(job["spec"]["template"]["spec"]["containers"][0])
        assert env["DRIVESTREAM_NPROC"] == str(t["nprocPerNode"])


def load_strimzi() -> list[dict[str, Any]]:
    return [
        d
        for path in sorted(STRIMZI.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]


def test_strimzi_example_validates():
    docs = load_strimzi()
    assert {d["kind"] for d in docs} >= {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    for doc in docs:
        assert crd_schema(doc) is not None, f"no schema for {doc['apiVersion']} {doc['kind']}"
        validate(doc)
    (kafka,) = [d for d in docs if d["kind"] == "Kafka"]
    for doc in docs:
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    pools = [d for d in docs if d["kind"] == "KafkaNodePool"]
    roles = {r for p in pools for r in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}, "KRaft needs controllers and brokers"


def test_strimzi_topics_match_the_code_and_the_chart():
    topics = {d["metadata"]["name"]: d["spec"] for d in load_strimzi() if d["kind"] == "KafkaTopic"}
    partitions = topics["sensors"]["partitions"]
    expected = {t.name: t for t in default_topics(partitions=partitions)}
    assert topics.keys() == expected.keys()
    for name, spec in topics.items():
        assert spec["partitions"] == expected[name].partitions, name
        assert {k: str(v) for k, v in spec.get("config", {}).items()} == expected[name].configs
    # the chart's default partition count (KEDA's cap) is the example's
    assert merged({})["kafka"]["partitions"] == partitions
    example = VALUE_SETS["strimzi-scram-tls"]["kafka"]
    assert example["partitions"] == partitions and example["createTopics"] is False
