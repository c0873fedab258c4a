"""`broker start` after a crash: a port held only by TIME_WAIT sockets is free (issue 12)."""

from __future__ import annotations

import socket

from pipeline.processes import port_is_free


def test_a_port_left_in_time_wait_by_a_killed_server_is_free_and_a_listener_is_not():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM's listener
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)  # listening
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server's side closes first: it is the one left in TIME_WAIT
        client.close()
    assert port_is_free(port)  # before: "port is taken" for a minute after a crash
