import json

import pytest

from build_ensemble.errors import IntegrityError
from build_ensemble.integrity import verify_repository, write_version_manifest


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


def test_a_version_of_another_repository_format_is_refused_with_what_to_do(tmp_path):
    folder = _version(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["repository_format"]  # what versions exported before the format was recorded hold
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"exported by another build-ensemble \(repository format 1, this one serves 2\): "
                                             r"re-export it with `build-ensemble export --out BUILD --repository .* --model-version 1`"):
        verify_repository(tmp_path)
