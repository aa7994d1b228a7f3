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
