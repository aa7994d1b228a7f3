"""A small data set of the kind you bring, written as files with its dataset spec.

String user and item ids, a feature of each kind on each side (categorical, continuous, list),
a rating label whose threshold drops rows, timestamps; users like items of their interests.
The README's "Your own data" walks through it; the tests build and serve it.

    .venv/bin/python examples/own_data.py my_data     # writes my_data/dataset.yaml and its files
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ["books", "games", "garden", "music", "tools", "toys"]
CATEGORIES_SORTED = np.array(CATEGORIES)
SPEC = """\
interactions: events/*.parquet
users: users.parquet
items: items.csv
user_id: uid
item_id: sku
timestamp: ts
label: rating
label_threshold: 4
user_features:
  country: categorical
  age: continuous
  interests: list
item_features:
  category: categorical
  price: {kind: continuous, log: true}
  tags: list
"""


def write_own_data(folder: Path, users: int = 300, items: int = 200, events: int = 12_000, seed: int = 0) -> Path:
    """Write ``dataset.yaml`` and its files into ``folder``; returns the spec's path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    user_ids = [f"user-{i:04d}" for i in range(users)]
    interests = [list(rng.choice(CATEGORIES, rng.integers(1, 3), replace=False)) for _ in range(users)]
    pd.DataFrame({
        "uid": user_ids,
        "country": rng.choice(["de", "fr", "jp", "us"], users),
        "age": rng.integers(18, 80, users).astype(float),
        "interests": interests,
    }).to_parquet(folder / "users.parquet", index=False)
    skus = [f"SKU{i:05d}" for i in range(items)]
    category = rng.choice(CATEGORIES, items)
    pd.DataFrame({
        "sku": skus,
        "category": category,
        "price": np.round(rng.lognormal(3, 1, items), 2),
        "tags": ["|".join(rng.choice(["new", "sale", "eco", "gift"], rng.integers(0, 3), replace=False)) for _ in range(items)],
    }).to_csv(folder / "items.csv", index=False)
    (folder / "events").mkdir(exist_ok=True)
    user = rng.integers(0, users, events)
    # 80% of the events are on an item of one of the user's interests, the rest anywhere.
    chosen = np.array([rng.choice(interests[u]) for u in range(users)])[user]
    by_category = {c: np.flatnonzero(category == c) for c in CATEGORIES}
    item = rng.integers(0, items, events)
    for c, members in by_category.items():
        rows = np.flatnonzero((chosen == c) & (rng.random(events) < 0.8))
        if len(members) and len(rows):
            item[rows] = rng.choice(members, len(rows))
    member = np.array([[c in wanted for c in CATEGORIES] for wanted in map(set, interests)])
    liked = member[user, np.searchsorted(CATEGORIES_SORTED, category[item])]
    rating = np.where(liked, rng.integers(3, 6, events), rng.integers(1, 4, events))
    frame = pd.DataFrame({"uid": np.array(user_ids)[user], "sku": np.array(skus)[item], "rating": rating,
                          "ts": 1_700_000_000 + np.sort(rng.integers(0, 10**7, events))})
    for number, part in enumerate(np.array_split(frame, 2)):
        part.to_parquet(folder / "events" / f"part-{number}.parquet", index=False)
    (folder / "dataset.yaml").write_text(SPEC)
    return folder / "dataset.yaml"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/own_data.py FOLDER")
    print(write_own_data(Path(sys.argv[1])))
