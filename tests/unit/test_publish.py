import pytest

from build_ensemble.integrity import verify_repository
from build_ensemble.publish import Targets, merge_models, model_version, partial, staging

from .test_integrity import _version


def test_next_version_and_merging_keeps_older_versions(tmp_path):
    target = tmp_path / "repo"
    assert model_version(target, 0) == 1
    _version(target, version=1, payload=b"one")
    (target / "README.md").write_text("kept")
    _version(target, model="stale_model")
    assert model_version(target, 0) == 2 and model_version(target, 5) == 5
    staged = tmp_path / "staged"
    _version(staged, version=2, payload=b"two")
    merge_models(staged, target)
    assert sorted(p.name for p in (target / "retrieval").iterdir()) == ["1", "2", "config.pbtxt"]
    assert (target / "retrieval" / "1" / "ensemble" / "ensemble.pkl").read_bytes() == b"one"
    assert (target / "retrieval" / "2" / "ensemble" / "ensemble.pkl").read_bytes() == b"two"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "retrieval"]  # other models go
    assert not staged.exists()
    verify_repository(target)


def test_a_failed_build_leaves_no_staged_folder(tmp_path):
    targets = Targets(tmp_path / "out", tmp_path / "fr", tmp_path / "mr")
    with pytest.raises(RuntimeError), staging(targets) as staged:
        assert staged.out == partial(targets.out) and staged.out.is_dir()
        raise RuntimeError("a stage failed")
    assert list(tmp_path.iterdir()) == []


def test_an_export_stages_only_the_repository(tmp_path):
    targets = Targets(tmp_path / "out", tmp_path / "fr", tmp_path / "mr")
    with staging(targets, folders=("repository",)) as staged:
        assert (staged.out, staged.feature_repo, staged.repository) == (targets.out, targets.feature_repo, partial(targets.repository))
    assert [p.name for p in tmp_path.iterdir()] == ["mr.partial"]  # left for the caller to merge


def test_models_are_not_published_into_a_folder_that_is_not_a_repository(tmp_path):
    from build_ensemble.errors import ConfigError
    from build_ensemble.publish import check_repository_target

    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "train.parquet").mkdir()
    with pytest.raises(ConfigError, match=r"is not a model repository \(it holds train.parquet"):
        check_repository_target(tmp_path / "artifacts", tmp_path / "build")
    with pytest.raises(ConfigError, match="is the build folder"):
        check_repository_target(tmp_path / "build", tmp_path / "build")
    _version(tmp_path / "repo")
    (tmp_path / "repo" / "README.md").write_text("kept")
    check_repository_target(tmp_path / "repo", tmp_path / "build")
    check_repository_target(tmp_path / "new", tmp_path / "build")
