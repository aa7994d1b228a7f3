"""Prototype, not product code: the query tower also reads the user's training items as a bag
(SimpleX's behaviour aggregation), mean-combined, its embedding table shared with the item
tower's item_id (or its own, with --own-table). MovieLens-100K, random split.

Each training row's bag is the user's other training items (leave-one-out: a row must not see
its own positive), at most --history-cap of them sampled; validation reads all training items,
test the training and validation items (known history, as the protocol's mask). Early stopping
on validation NDCG@10 as in the build. docs/quality.md reports what it measured.

    .venv/bin/python scripts/try_history_bag.py --seed 0
    .venv/bin/python scripts/try_history_bag.py --seed 0 --own-table --set '{"l2_reg": 1e-4}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

from build_ensemble import constants as C  # noqa: E402
from build_ensemble import evaluate as ev  # noqa: E402
from build_ensemble import train as T  # noqa: E402
from build_ensemble.config import make_config  # noqa: E402
from build_ensemble.workflow import ITEM_SUBGRAPH, USER_SUBGRAPH, encode, load_workflow, transformed_dir  # noqa: E402

BAG = "history"


def sampled(ids: np.ndarray, cap: int, rng) -> np.ndarray:
    """At most ``cap`` of ``ids``; a user without any gets the reserved id 0 (Categorify's padding)."""
    ids = rng.choice(ids, cap, replace=False) if len(ids) > cap else ids
    return np.asarray(ids if len(ids) else [0], dtype=np.int64)


def leave_one_out_bags(rows: pd.DataFrame, cap: int, rng) -> list:
    """For each (encoded) training row, the user's other training items."""
    by_user = rows.groupby(C.USER_ID)[C.ITEM_ID].apply(np.array).to_dict()
    bags = []
    for user, item in zip(rows[C.USER_ID].to_numpy(), rows[C.ITEM_ID].to_numpy()):
        ids = by_user[user]
        bags.append(sampled(np.delete(ids, np.flatnonzero(ids == item)[0]), cap, rng))
    return bags


def build(schema, bag_column, config, probs: np.ndarray, shared: bool):
    """The Two-Tower of `train.build_model`, in-batch negatives and logQ, with the bag in the query tower."""
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.models.tf.outputs.base import DotProduct
    from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
    from merlin.schema import Tags

    def encoder(tower_schema, dims, table=None):
        categorical = tower_schema.select_by_tag(Tags.CATEGORICAL)
        own = categorical.excluding_by_name([BAG]) if table is not None else categorical
        embeddings = mm.Embeddings(own, l2_batch_regularization_factor=config.l2_reg)
        if table is not None:
            table.add_feature(bag_column)  # one table for item_id (item tower) and the bag (query tower)
            embeddings = mm.ParallelBlock({**embeddings.parallel_layers, "shared_item_id": table}, schema=categorical)
        mlp = mm.MLPBlock(list(dims), no_activation_last_layer=True, dropout=config.dropout or None)
        return mm.Encoder(mm.InputBlockV2(tower_schema, categorical=embeddings), mlp, post=mm.L2Norm()), embeddings

    item_schema = schema.select_by_tag(Tags.ITEM)
    item_id = item_schema.select_by_tag(Tags.ITEM_ID)
    item_encoder, item_embeddings = encoder(item_schema, config.item_tower_dims)
    table = item_embeddings.parallel_layers[item_id.first.int_domain.name] if shared else None
    query_encoder, _ = encoder(schema.select_by_tag(Tags.USER), config.query_tower, table)
    return mm.TwoTowerModelV2(query_encoder, item_encoder, outputs=mm.ContrastiveOutput(
        DotProduct(), negative_samplers="in-batch", schema=item_id, logits_temperature=config.temperature,
        store_negative_ids=True, post=PopularityLogitsCorrection(
            probs, is_prob_distribution=True, reg_factor=config.temperature * config.logq_weight,
            schema=item_schema))), tf.keras.optimizers.Adam(learning_rate=config.learning_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history-cap", type=int, default=50)
    parser.add_argument("--own-table", action="store_true", help="the bag gets its own table (not shared)")
    parser.add_argument("--set", default="{}", help="JSON overrides of the MovieLens defaults")
    args = parser.parse_args()
    bq.one_thread_each()  # before TensorFlow starts: the same threads as the benchmark's workers
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.io import Dataset
    from merlin.schema import ColumnSchema, Schema, Tags

    overrides = json.loads(args.set)
    config = make_config(overrides={"dataset": "movielens-100k", "split": "random", "seed": args.seed, **overrides})
    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="history-bag-") as tmp:
        data, users, items = bq.prepare("random", args.seed, Path(tmp) / "data")
        workflow = load_workflow(data.root / C.WORKFLOW_DIR)
        train_dir = transformed_dir(data.root, "train")
        rows = pd.concat([pd.read_parquet(p) for p in sorted(train_dir.glob("*.parquet"))], ignore_index=True)
        base = Dataset(str(train_dir), engine="parquet", cpu=True).schema.excluding_by_name([C.CLICK])
        train, valid, test = ev.split_matrices(data, ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy()))
        encoded_users, encoded_items = encode(workflow, USER_SUBGRAPH, users), encode(workflow, ITEM_SUBGRAPH, items)
    user_schema = workflow.get_subworkflow(USER_SUBGRAPH).output_schema
    item_schema = workflow.get_subworkflow(ITEM_SUBGRAPH).output_schema
    known = bq.known_history(train, valid)

    domain = base.select_by_tag(Tags.ITEM_ID).first.int_domain
    bag_column = ColumnSchema(BAG, dtype=np.int64, is_list=True, is_ragged=True, tags=[Tags.USER, Tags.CATEGORICAL],
                              properties={"domain": {"min": 0, "max": domain.max,
                                                     "name": BAG if args.own_table else domain.name}})
    schema, query_schema = base + Schema([bag_column]), user_schema + Schema([bag_column])
    rows = rows.drop(columns=[C.CLICK]).assign(**{BAG: leave_one_out_bags(rows, args.history_cap, rng)})
    item_code = encoded_items[C.ITEM_ID].to_numpy()

    def with_bags(matrix):
        bags = [sampled(item_code[matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]]], args.history_cap, rng)
                for u in range(matrix.shape[0])]
        return encoded_users.assign(**{BAG: bags})

    validation_users, test_users = with_bags(train), with_bags(known)
    probs = T.item_probabilities(rows[C.ITEM_ID].to_numpy(), domain.max + 1).astype(np.float32)
    model, optimizer = build(schema, bag_column, config, probs, shared=not args.own_table)
    model.compile(optimizer=optimizer, metrics=[])
    loader = mm.Loader(Dataset(rows, cpu=True, schema=schema), batch_size=config.batch_size, shuffle=True)

    def scorer(query_users):
        return ev.dot_scorer(T.embed(model.query_encoder, query_users, query_schema),
                             T.embed(model.candidate_encoder, encoded_items, item_schema))

    start, best, best_weights, best_epoch, curve = time.perf_counter(), -1.0, None, 0, []
    for epoch in range(1, config.epochs + 1):
        model.fit(loader, epochs=1, verbose=0)
        curve.append(round(ev.evaluate(scorer(validation_users), valid, [10], exclude=train)["ndcg@10"], 4))
        if curve[-1] > best:
            best, best_weights, best_epoch = curve[-1], model.get_weights(), epoch
        elif epoch - best_epoch >= config.patience:
            break
    model.set_weights(best_weights)
    shared_weights = [v.name for v in model.query_encoder.trainable_weights
                      if any(v is w for w in model.candidate_encoder.trainable_weights)]
    metrics = ev.evaluate(scorer(test_users), test, [10], exclude=known)
    print(json.dumps({"seed": args.seed, "history_cap": args.history_cap, "shared_weights": shared_weights,
                      "overrides": overrides, "valid_ndcg@10": best, "test_recall@10": round(metrics["recall@10"], 4),
                      "test_ndcg@10": round(metrics["ndcg@10"], 4), "best_epoch": best_epoch,
                      "train_seconds": round(time.perf_counter() - start), "valid_curve": curve}))


if __name__ == "__main__":
    main()
