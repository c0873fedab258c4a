"""The local cluster's plan without JVMs: ports, quorum voters, per-node dirs and configs,
the state file (also as written before clusters), and the replication topics get."""

from __future__ import annotations

import argparse
import json
import os
import socket

import pytest

from pipeline import broker_cli
from pipeline.broker import (
    BrokerConfig,
    BrokerState,
    LocalBroker,
    NodeState,
    node_home,
    plan_nodes,
    server_properties,
)
from pipeline.processes import free_port, port_is_free
from schemas.errors import ConfigError
from schemas.kafka.admin import replication


def free_run(length: int) -> int:
    """A port with the ``length - 1`` after it free too."""
    while True:
        port = free_port()
        if port + length <= 65536 and all(port_is_free(port + i) for i in range(length)):
            return port


def test_three_nodes_name_the_same_voters_and_keep_their_own_ports_and_dirs(tmp_path):
    nodes = plan_nodes(3, 0)
    ports = [n.port for n in nodes] + [n.controller_port for n in nodes]
    assert len(set(ports)) == 6
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    for node in nodes:
        home = node_home(tmp_path, node.node_id, 3)
        assert home == tmp_path / f"node-{node.node_id}"
        props = server_properties(node, nodes, home)
        assert props["node.id"] == str(node.node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert props["log.dirs"] == str(tmp_path / f"node-{node.node_id}" / "kraft")


def test_a_cluster_replicates_internal_topics_three_times_with_two_in_sync(tmp_path):
    nodes = plan_nodes(3, 0)
    props = server_properties(nodes[0], nodes, tmp_path / "node-1")
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["group.min.session.timeout.ms"] == "1000"  # the rest as for one broker
    assert props["offsets.topic.num.partitions"] == "1"


def test_a_single_broker_is_configured_as_before_clusters(tmp_path):
    node = NodeState(node_id=1, pid=0, port=9092, controller_port=40000)
    assert node_home(tmp_path, 1, 1) == tmp_path
    assert server_properties(node, [node], tmp_path) == {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:40000",
        "listeners": "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:40000",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:9092",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(tmp_path / "kraft"),
        "num.partitions": "4",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "auto.create.topics.enable": "false",
    }


def test_a_given_port_and_the_next_ones_are_the_client_ports():
    port = free_run(3)
    nodes = plan_nodes(3, port)
    assert [n.port for n in nodes] == [port, port + 1, port + 2]
    assert not {n.controller_port for n in nodes} & {port, port + 1, port + 2}


def test_a_taken_client_port_is_a_clear_error():
    port = free_run(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 1))
        squatter.listen()
        with pytest.raises(ConfigError, match=f"port {port + 1} is taken"):
            plan_nodes(3, port)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"brokers": 2}, "brokers must be 1 or 3"), ({"brokers": 3, "port": 65534}, "port must be")],
)
def test_bad_cluster_settings_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BrokerConfig(data_dir=tmp_path, **kwargs)


def test_the_state_file_lists_every_node_and_reads_a_single_brokers_old_one():
    nodes = tuple(
        NodeState(node_id=i, pid=100 + i, port=9091 + i, controller_port=9191 + i)
        for i in (1, 2, 3)
    )
    state = BrokerState(nodes, "4.2.0")
    assert BrokerState.from_json(state.to_json()) == state
    assert state.bootstrap == "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    old = '{"pid": 7, "port": 9092, "controller_port": 9192, "version": "4.1.0"}'
    assert BrokerState.from_json(old) == BrokerState(
        (NodeState(node_id=1, pid=7, port=9092, controller_port=9192),), "4.1.0"
    )


def test_a_state_file_whose_nodes_are_gone_is_removed(tmp_path):
    broker = LocalBroker(BrokerConfig(data_dir=tmp_path, brokers=3))
    node = NodeState(node_id=1, pid=os.getpid(), port=1, controller_port=2)  # no kafka.Kafka
    broker.state_file.write_text(BrokerState((node,), "4.2.0").to_json())
    assert broker.state() is None
    assert not broker.state_file.exists()


@pytest.mark.parametrize(
    ("formatted", "brokers", "message"),
    [("kraft", 3, "holds a single broker"), ("node-1/kraft", 1, "holds a 3-broker cluster")],
)
def test_a_data_dir_holds_one_size_of_cluster(tmp_path, formatted, brokers, message):
    (tmp_path / formatted).mkdir(parents=True)
    (tmp_path / formatted / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(ConfigError, match=message):  # before any JVM starts
        LocalBroker(BrokerConfig(data_dir=tmp_path, port=0, brokers=brokers)).start()


def test_topics_get_three_replicas_two_in_sync_once_there_are_three_brokers():
    assert replication(1) == (1, {})
    assert replication(2) == (1, {})
    assert replication(3) == (3, {"min.insync.replicas": "2"})
    assert replication(5) == (3, {"min.insync.replicas": "2"})


def test_brokers_flag_has_an_environment_twin(monkeypatch):
    monkeypatch.setenv("DRIVESTREAM_BROKERS", "3")
    parser = argparse.ArgumentParser()
    broker_cli.add_arguments(parser)
    assert parser.parse_args(["start"]).brokers == 3
    assert parser.parse_args(["start", "--brokers", "1"]).brokers == 1
    assert "DRIVESTREAM_BROKERS" in parser.format_help()


def test_status_of_a_single_broker_keeps_its_flat_fields(tmp_path):
    node = NodeState(node_id=1, pid=7, port=9092, controller_port=9192)
    shown = broker_cli.status(
        LocalBroker(BrokerConfig(data_dir=tmp_path)), BrokerState((node,), "v")
    )
    assert json.loads(json.dumps(shown)) == {
        "pid": 7,
        "port": 9092,
        "controller_port": 9192,
        "version": "v",
        "bootstrap": "127.0.0.1:9092",
    }


def test_status_of_a_cluster_lists_every_node(tmp_path):
    nodes = tuple(NodeState(node_id=i, pid=0, port=i, controller_port=10 + i) for i in (1, 2, 3))
    shown = broker_cli.status(LocalBroker(BrokerConfig(data_dir=tmp_path)), BrokerState(nodes, "v"))
    assert shown["bootstrap"] == "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    assert [(n["node_id"], n["port"], n["running"]) for n in shown["nodes"]] == [
        (1, 1, False),
        (2, 2, False),
        (3, 3, False),
    ]
