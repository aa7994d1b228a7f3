import json

import pytest

from build_ensemble.errors import IntegrityError
from build_ensemble.integrity import verify_repository, write_version_manifest
from build_ensemble.pipeline import _merge_models, model_version


def _version(repository, model="retrieval", version=1, payload=b"graph"):
    folder = repository / model / str(version)
    (folder / "ensemble").mkdir(parents=True)
    (folder / "ensemble" / "ensemble.pkl").write_bytes(payload)
    (folder / "model.py").write_text("import x\n")
    (repository / model / "config.pbtxt").write_text(f'name: "{model}"\n')
    write_version_manifest(folder, {"created": "now"})
    return folder


def test_an_untouched_repository_verifies(tmp_path):
    folder = _version(tmp_path)
    (folder / "__pycache__").mkdir()  # what importing model.py leaves behind
    (folder / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"cache")
    assert verify_repository(tmp_path) == [folder]
    assert json.loads((folder / "manifest.json").read_text())["created"] == "now"


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda f: (f / "ensemble" / "ensemble.pkl").write_bytes(b"evil"), "ensemble.pkl differs from its checksum"),
        (lambda f: (f / "model.py").unlink(), "model.py is missing"),
        (lambda f: (f / "ensemble" / "extra.pkl").write_bytes(b"x"), "extra.pkl is not in"),
        (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
        (lambda f: (f / "manifest.json").write_text("{"), "unreadable"),
    ],
)
def test_a_changed_version_is_refused_with_the_file_named(tmp_path, tamper, message):
    tamper(_version(tmp_path))
    with pytest.raises(IntegrityError, match=message):
        verify_repository(tmp_path)


def test_next_version_and_merging_keeps_older_versions(tmp_path):
    target = tmp_path / "repo"
    assert model_version(target, 0) == 1
    _version(target, version=1, payload=b"one")
    (target / "README.md").write_text("kept")
    _version(target, model="stale_model")
    assert model_version(target, 0) == 2 and model_version(target, 5) == 5
    staged = tmp_path / "staged"
    _version(staged, version=2, payload=b"two")
    _merge_models(staged, target)
    assert sorted(p.name for p in (target / "retrieval").iterdir()) == ["1", "2", "config.pbtxt"]
    assert (target / "retrieval" / "1" / "ensemble" / "ensemble.pkl").read_bytes() == b"one"
    assert (target / "retrieval" / "2" / "ensemble" / "ensemble.pkl").read_bytes() == b"two"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "retrieval"]  # other models go
    assert not staged.exists()
    verify_repository(target)
