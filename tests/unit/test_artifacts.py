import json
from importlib import metadata

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble import artifacts


def test_embeddings_round_trip_keeps_raw_ids(tmp_path):
    ids = np.array([2**40, 5, 17], dtype=np.int64)
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    path = artifacts.write_embeddings(tmp_path / "e.parquet", C.ITEM_ID, ids, vectors)
    got_ids, got = artifacts.read_embeddings(path, C.ITEM_ID)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)
    assert list(pd.read_parquet(path).columns) == [C.ITEM_ID, "embedding"]


def test_item_popularity_counts_clicks_over_the_whole_catalog():
    train = pd.DataFrame({C.ITEM_ID: [7, 7, 9, 9, 9, 8], C.CLICK: [1, 1, 1, 1, 1, 0]})
    table = artifacts.item_popularity(train, np.array([7, 8, 9, 10]))
    assert table[C.ITEM_ID].tolist() == [9, 7, 8, 10]
    assert table["count"].tolist() == [3, 2, 0, 0]
    assert np.isclose(table["score"].sum(), 1.0)


def test_manifest_and_history_plot(tmp_path):
    info = artifacts.manifest({"epochs": 1}, {"train": 1.0}, {"index": {}, "data": {"fingerprint": "x"}})
    assert info["packages"]["merlin-models"] == metadata.version("merlin-models")  # read from the environment
    assert info["timings_seconds"] == {"train": 1.0} and info["data"] == {"fingerprint": "x"}
    artifacts.write_json(tmp_path / "m.json", info)
    assert json.loads((tmp_path / "m.json").read_text())["options"] == {"epochs": 1}
    history = [{"epoch": 1, "loss": 3.0, "valid_ndcg@10": 0.1}, {"epoch": 2, "loss": 2.0, "valid_ndcg@10": 0.2}]
    png = artifacts.plot_history(history, tmp_path / "loss.png", "valid_ndcg@10")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checksums_cover_files_in_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"abc")
    sums = artifacts.file_checksums(tmp_path, ["a"])
    assert sums == {"a/x.bin": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
