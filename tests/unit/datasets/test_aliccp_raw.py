"""Ali-CCP as downloaded, through Merlin's converter: every valid row arrives, nothing is written beside the raw files."""

import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.datasets import aliccp_raw
from build_ensemble.errors import DataError
from build_ensemble.prepared import read_parts
from build_ensemble.progress import Reporter

from .raw_aliccp import write_raw_aliccp


@pytest.mark.parametrize("lines", [{"train": 260, "test": 130}, {"train": 300, "test": 201}], ids=["260/130", "300/201"])
def test_every_valid_row_of_the_raw_files_arrives(tmp_path, lines):
    raw = tmp_path / "raw"
    valid = write_raw_aliccp(raw, lines)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    out = tmp_path / "build"
    out.mkdir()
    config = make_config(overrides={"dataset": "aliccp-raw", "data_dir": str(raw)})
    # file_size 100 in the converter: without the workaround the lines after the last multiple of
    # 100 are lost (260 lines: 60), and with fewer lines than file_size nothing is written.
    converted = aliccp_raw.convert(raw, out / "converted", file_size=100)
    assert len(read_parts(converted / "train")) == valid["train"]
    assert len(read_parts(converted / "test")) == valid["test"]
    data = aliccp_raw.prepare(config, out, Reporter())  # the default file_size, 100,000 > every file here
    assert data.counts["train_rows"] == valid["train"]
    assert data.counts["valid_rows"] + data.counts["test_rows"] == valid["test"]
    users = pd.read_parquet(data.users)
    assert users[C.USER_ID].between(1000, 1029).all() and "user_categories" in users.columns
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before  # no pickle beside the raw data


def test_missing_raw_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"train/sample_skeleton_train.csv is missing: --data-dir needs Ali-CCP as downloaded"):
        aliccp_raw.convert(tmp_path, tmp_path / "out")


def test_a_failing_converter_fails_the_build_and_leaves_no_writer_blocked(tmp_path):
    raw = tmp_path / "raw"
    write_raw_aliccp(raw, {"train": 50, "test": 20})
    skeleton = raw / "train" / "sample_skeleton_train.csv"
    skeleton.write_text(skeleton.read_text().replace(",c1,", ",no-such-user,"))  # a common index the converter lacks
    with pytest.raises(KeyError):
        aliccp_raw.convert(raw, tmp_path / "out", file_size=100)
