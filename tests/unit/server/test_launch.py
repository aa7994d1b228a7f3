from build_ensemble.server.launch import log_errors


def test_error_lines_are_condensed(tmp_path):
    log = tmp_path / "tritonserver.log"
    log.write_text('I1128 started\nE1128 00:00:00.1 1 model.cc:1] "failed to load \'retrieval\': online store is missing\\nTraceback ..."\n')
    assert log_errors(log) == "  failed to load 'retrieval': online store is missing"


def test_without_error_lines_the_last_lines_are_shown(tmp_path):
    log = tmp_path / "tritonserver.log"
    log.write_text("Usage: tritonserver [options]\n  --help\n\nThe server cannot listen to GRPC requests and metrics requests at the same address\n")
    assert log_errors(log).endswith("The server cannot listen to GRPC requests and metrics requests at the same address")
    assert log_errors(tmp_path / "absent.log") == ""


def test_a_taken_or_repeated_port_is_refused_before_starting(tmp_path):
    import socket

    import pytest

    from build_ensemble.errors import ServerError
    from build_ensemble.server.launch import ServerSpec, check_ports

    from ...conftest import free_ports

    http, grpc, metrics = free_ports(3)
    check_ports(ServerSpec(str(tmp_path), http_port=http, grpc_port=grpc, metrics_port=metrics))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", metrics))
        holder.listen()
        with pytest.raises(ServerError, match=f"the metrics port 127.0.0.1:{metrics} is in use .*choose another --metrics-port"):
            check_ports(ServerSpec(str(tmp_path), http_port=http, grpc_port=grpc, metrics_port=metrics))
    with pytest.raises(ServerError, match=f"the HTTP and gRPC ports are both {http}"):
        check_ports(ServerSpec(str(tmp_path), http_port=http, grpc_port=http, metrics_port=metrics))


def test_a_service_triton_could_not_start_is_found_in_its_log(tmp_path):
    from build_ensemble.server.launch import service_failures

    log = tmp_path / "tritonserver.log"
    log.write_text('I1201 server.cc] "ready"\nE1201 main.cc:240] "failed to start Metrics service: Address already in use"\n')
    assert service_failures(log) == ["failed to start Metrics service: Address already in use"]
