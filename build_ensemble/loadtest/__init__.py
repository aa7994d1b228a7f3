"""Load tests of a served model: ``harness`` (our closed- and open-loop driver) and
``perf_analyzer`` (NVIDIA's, on the same user ids). Loopback targets only."""
