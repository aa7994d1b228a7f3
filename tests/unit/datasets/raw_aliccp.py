"""Write Ali-CCP files in the exact format of the download (``sample_skeleton_*.csv``, ``common_features_*.csv``).

Skeleton line: ``sample_id,click,conversion,common_feature_index,feature_count,features``;
common-features line: ``common_feature_index,feature_count,features``; ``features`` is a list of
``field_id \\x01 feature_id \\x03 value`` entries separated by ``\\x02``.
"""

from pathlib import Path

import numpy as np

USER_FIELDS = ("101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127", "128", "129")
ITEM_FIELDS = ("205", "206", "207", "210", "216", "508", "509", "702", "853", "301")


def _features(fields, rng, ids=None) -> str:
    entries = [f"{field}\x01{ids.get(field) if ids and field in ids else rng.integers(1, 40)}\x03{rng.random():.4f}"
               for field in fields]
    return "\x02".join(entries)


def write_raw_aliccp(folder: Path, lines: dict, users: int = 30, items: int = 50, seed: int = 0) -> dict:
    """Write ``{split: number of skeleton lines}``; returns ``{split: number of valid lines}``
    (lines with click 0 and conversion 1, which the converter skips, are mixed in)."""
    rng = np.random.default_rng(seed)
    valid = {}
    for split, count in lines.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        with open(folder / split / f"common_features_{split}.csv", "w") as common:
            for user in range(users):
                common.write(f"c{user},{len(USER_FIELDS)},{_features(USER_FIELDS, rng, {'101': 1000 + user})}\n")
        valid[split] = 0
        with open(folder / split / f"sample_skeleton_{split}.csv", "w") as skeleton:
            for number in range(count):
                click, conversion = (0, 1) if number % 17 == 5 else (int(rng.random() < 0.4), 0)
                valid[split] += not (click == 0 and conversion == 1)
                features = _features(ITEM_FIELDS, rng, {"205": 500 + int(rng.integers(0, items))})
                skeleton.write(f"{number},{click},{conversion},c{rng.integers(0, users)},{len(ITEM_FIELDS)},{features}\n")
    return valid
