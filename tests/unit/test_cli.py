import subprocess
import sys
from pathlib import Path

import pytest

from build_ensemble.cli import main, make_parser

CLI = str(Path(sys.executable).parent / "build-ensemble")


def test_every_build_option_is_documented():
    from build_ensemble.config import BuildConfig
    import dataclasses

    text = make_parser()._subparsers._group_actions[0].choices["build"].format_help()
    for f in dataclasses.fields(BuildConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "(default: synthetic-aliccp)" in text


def test_bad_option_value_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["build", "--dataset", "aliccp", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: dataset aliccp needs --train-glob and --valid-glob (parquet files)"


def test_missing_data_files_fail_fast_and_leave_nothing(tmp_path):
    out = tmp_path / "artifacts"
    args = ["build", "--dataset", "aliccp", "--train-glob", str(tmp_path / "none/*.parquet"),
            "--valid-glob", str(tmp_path / "none/*.parquet"), "--out", str(out),
            "--feature-repo", str(tmp_path / "fr"), "--repository", str(tmp_path / "mr")]
    result = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "no file matches" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_evaluate_without_a_build(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_stop_without_a_server(tmp_path, capsys):
    assert main(["stop", "--state-dir", str(tmp_path)]) == 1


def test_serve_without_a_repository_fails_fast(tmp_path):
    result = subprocess.run([CLI, "serve", "--repository", str(tmp_path), "--state-dir", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "holds no model" in result.stderr


def test_flags_are_typed_by_their_field():
    args = make_parser().parse_args(["build", "--items", "1000", "--learning-rate", "0.01", "--query-tower", "32", "16",
                                     "--no-logq", "--id-embedding-dim", "8"])
    assert (args.items, args.learning_rate, args.query_tower, args.logq, args.id_embedding_dim) == (1000, 0.01, [32, 16], False, 8)


def test_export_without_a_build_is_one_line(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "none"), "--repository", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none' / 'manifest.json'} is missing: is {tmp_path / 'none'} a finished build?"
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_export_changes_only_repository_options(tmp_path):
    import json

    from build_ensemble.errors import ConfigError
    from build_ensemble.pipeline import export_build

    (tmp_path / "manifest.json").write_text(json.dumps({"options": {}}))
    with pytest.raises(ConfigError, match="export can change tower_backend, with_item_features, index, top_k, "
                                          "instances, model_version only, got epochs"):
        export_build(tmp_path, tmp_path / "repo", overrides={"epochs": 3})


def test_cli_defaults_come_from_the_dataclasses_that_own_them():
    from build_ensemble import client
    from build_ensemble.server.launch import ServerSpec

    parser = make_parser()
    serve = parser.parse_args(["serve"])
    assert (serve.http_port, serve.grpc_port, serve.metrics_port, serve.state_dir, serve.watchdog) == (
        ServerSpec.http_port, ServerSpec.grpc_port, ServerSpec.metrics_port, ServerSpec.state_dir, ServerSpec.watchdog)
    assert parser.parse_args(["recommend", "--user-id", "1"]).timeout == client.DEFAULT_TIMEOUT
    exported = parser.parse_args(["export"])
    assert (exported.index, exported.top_k, exported.model_version) == (None, None, None)  # the build's own


def test_build_help_shows_each_data_sets_own_defaults():
    text = make_parser()._subparsers._group_actions[0].choices["build"].format_help()
    assert "movielens-100k: --exclude-seen True, --epochs 40, --patience 8" in text
    assert "movielens-100k, --split temporal: --recent-items 5" in text


def test_verify_checks_a_repository_where_it_was_copied(tmp_path, capsys):
    from build_ensemble.integrity import write_version_manifest

    assert main(["verify", "--repository", str(tmp_path)]) == 2
    assert "holds no model" in capsys.readouterr().err
    version = tmp_path / "retrieval" / "1"
    version.mkdir(parents=True)
    (tmp_path / "retrieval" / "config.pbtxt").write_text('name: "retrieval"\n')
    (version / "model.py").write_text("x = 1\n")
    write_version_manifest(version, {})
    assert main(["verify", "--repository", str(tmp_path)]) == 0
    (version / "model.py").write_text("x = 2\n")
    assert main(["verify", "--repository", str(tmp_path)]) == 2
    assert "model.py differs from its checksum" in capsys.readouterr().err


def test_a_log_gets_stage_durations_and_no_progress_bars(capsys):
    from build_ensemble.cli import ConsoleReporter

    reporter = ConsoleReporter()  # pytest's captured stderr is not a terminal
    assert reporter.batches(10) is None and list(reporter.iterate(iter([1, 2]), "chunks")) == [1, 2]
    reporter.stage("train")
    reporter.stage_done("train", 12.34)
    assert capsys.readouterr().err == "==> train\n    train done in 12.3 s\n"


def test_hints_name_a_state_folder_that_is_not_the_default(tmp_path, capsys):
    assert main(["reload", "--state-dir", str(tmp_path)]) == 2
    assert f"`build-ensemble serve --background --state-dir {tmp_path}`" in capsys.readouterr().err
    assert main(["stop", "--state-dir", str(tmp_path)]) == 1
    assert "(started with another --state-dir?)" in capsys.readouterr().out
