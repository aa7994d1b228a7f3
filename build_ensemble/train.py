"""Build stage: the Two-Tower model (Merlin Models, TensorFlow): build, train with early stopping, embed, save."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble import evaluate as ev
from build_ensemble.artifacts import StageResult, plot_history, write_embeddings, write_json
from build_ensemble.config import BuildConfig
from build_ensemble.prepared import PreparedData, read_parts
from build_ensemble.progress import Reporter

logger = logging.getLogger(__name__)

EMBED_BATCH_SIZE = 4096
MONITOR = "valid_ndcg@10"  # early stopping maximises it


def run(config: BuildConfig, build_dir: Path, reporter: Reporter) -> StageResult:
    """Train on the transformed training split, then write the towers, the NumPy query tower
    (when it reproduces TensorFlow), the user and item embeddings and the training history.

    Args:
        config: model, optimizer and early-stopping options.
        build_dir: build folder after the workflow stage.
        reporter: receives each epoch's record and per-batch progress.
    """
    from build_ensemble.tower import compile_tower, numpy_inputs

    data = PreparedData.load(build_dir)
    users, items = pd.read_parquet(data.users), pd.read_parquet(data.items)
    result, user_vectors, item_vectors, encoded_users = train_and_embed(config, data, users, items, reporter)
    query_dir, item_dir = save_towers(result.model, build_dir)
    inputs = numpy_inputs(encoded_users, data.spec.list_features)
    continuous = tuple(f for f in data.spec.user_features if f in data.spec.continuous_features)
    tower = compile_tower(result.model.query_encoder, inputs, user_vectors, build_dir / C.COMPILED_TOWER_DIR, continuous)
    embeddings = [
        write_embeddings(build_dir / C.USER_EMBEDDINGS_FILE, C.USER_ID, users[C.USER_ID], user_vectors),
        write_embeddings(build_dir / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID, items[C.ITEM_ID], item_vectors),
    ]
    history = write_json(build_dir / C.HISTORY_FILE, {"history": result.history, "best_epoch": result.best_epoch})
    plot = plot_history(result.history, build_dir / C.LOSS_PLOT_FILE, MONITOR)
    training = {"best_epoch": result.best_epoch, "examples_per_second": round(result.examples_per_second, 1)}
    wrote = [query_dir, item_dir, *embeddings, history, plot]
    if tower["runtime"] == "numpy":
        wrote.append(build_dir / C.COMPILED_TOWER_DIR)
    return StageResult(wrote, {"training": training, "query_tower": tower})


def train_and_embed(config: BuildConfig, data: PreparedData, users: pd.DataFrame, items: pd.DataFrame, reporter: Reporter):
    """Train with per-epoch full-catalog validation.

    Args:
        config: build configuration.
        data: prepared data of a build folder whose workflow stage ran.
        users: raw user table (``data.users``); embeddings follow its row order.
        items: raw item table (``data.items``); embeddings follow its row order.
        reporter: receives each epoch's record and per-batch progress.

    Returns:
        ``(TrainResult, [num_users, dim] user vectors, [num_items, dim] item vectors, encoded users)``,
        rows in the order of ``users`` and ``items``.
    """
    from build_ensemble.workflow import ITEM_SUBGRAPH, USER_SUBGRAPH, encode, load_workflow, transformed_dir

    workflow = load_workflow(data.root / C.WORKFLOW_DIR)
    user_schema = workflow.get_subworkflow(USER_SUBGRAPH).output_schema
    item_schema = workflow.get_subworkflow(ITEM_SUBGRAPH).output_schema
    encoded_users = encode(workflow, USER_SUBGRAPH, users)
    # History features change with time: validation scores the users as they were before it.
    validation_users = encoded_users
    if data.spec.history_features:
        validation_users = encode(workflow, USER_SUBGRAPH, pd.read_parquet(data.validation_users))
    encoded_items = encode(workflow, ITEM_SUBGRAPH, items)
    catalog = ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy())
    columns = [C.USER_ID, C.ITEM_ID, C.CLICK]
    train = catalog.matrix(data.read_split("train", columns))
    valid = catalog.matrix(data.read_split("valid", columns))
    exclude = train if config.exclude_seen else None

    def validate(model) -> dict:
        user_vectors = embed(model.query_encoder, validation_users, user_schema)
        item_vectors = embed(model.candidate_encoder, encoded_items, item_schema)
        scorer = ev.dot_scorer(user_vectors, item_vectors)
        result = ev.evaluate(scorer, valid, [10], exclude=exclude, max_users=config.eval_users, seed=config.seed)
        return {f"valid_{k}": v for k, v in result.items() if k != "users"}

    train_dir = transformed_dir(data.root, "train")
    result = train_model(config, train_dir, validate, MONITOR, reporter.epoch, reporter.batches, encoded_items)
    user_vectors = embed(result.model.query_encoder, encoded_users, user_schema)
    item_vectors = embed(result.model.candidate_encoder, encoded_items, item_schema)
    return result, user_vectors, item_vectors, encoded_users


@dataclass
class TrainResult:
    """A trained model and what happened on the way.

    Attributes:
        model: the Merlin ``RetrievalModelV2`` with the best validation weights restored.
        history: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and the validation metrics.
        best_epoch: epoch (1-based) whose weights were kept.
        examples_per_second: training throughput over all epochs.
    """

    model: object
    history: list = field(default_factory=list)
    best_epoch: int = 0
    examples_per_second: float = 0.0


def item_probabilities(item_ids: np.ndarray, cardinality: int) -> np.ndarray:
    """Sampling probability of each encoded item id under in-batch sampling.

    In-batch negatives are the batch's positives, so an item is drawn as often as it is
    clicked in training: ``q(i) = count(i) / total``. Ids never seen get probability 0.

    Args:
        item_ids: ``[n]`` int encoded item id of each training positive.
        cardinality: number of encoded ids (Categorify's reserved ids included).

    Returns:
        ``[cardinality]`` float64 probabilities summing to 1.
    """
    counts = np.bincount(np.asarray(item_ids, dtype=np.int64), minlength=cardinality).astype(np.float64)
    if counts.shape[0] != cardinality:
        raise ValueError(f"item ids reach {counts.shape[0] - 1}, beyond the cardinality {cardinality}")
    return counts / counts.sum()


def logq_corrected_logits(
    scores: np.ndarray, item_ids: np.ndarray, probs: np.ndarray, temperature: float = 1.0, weight: float = 1.0
):
    """Reference of the logQ correction of in-batch logits (what training applies).

    Args:
        scores: ``[batch, batch]`` float dot products of each query with each in-batch item.
        item_ids: ``[batch]`` int encoded item id of each column.
        probs: ``[cardinality]`` float sampling probabilities.
        temperature: logits temperature.
        weight: strength of the correction (1: exact).

    Returns:
        ``[batch, batch]`` float ``scores / temperature - weight * log q(item)``: the correction
        is applied before the temperature, scaled by it, so the temperature does not weaken it.
    """
    return scores / temperature - weight * np.log(probs[item_ids])[None, :]


def id_columns(schema):
    """The user_id and item_id columns of a schema.

    Not ``select_by_tag([Tags.USER_ID, Tags.ITEM_ID])``: those are compound tags (USER + ID,
    ITEM + ID) and a list of tags matches any part, which selects every user and item column.
    """
    from merlin.schema import Tags

    return schema.select_by_tag(Tags.USER_ID) + schema.select_by_tag(Tags.ITEM_ID)


def _encoder(schema, dims: list, config: BuildConfig):
    import merlin.models.tf as mm
    import tensorflow as tf

    from merlin.schema import Tags

    ids = id_columns(schema).column_names
    sizes = {name: config.id_embedding_dim for name in ids} if config.id_embedding_dim else None
    # Embeddings for the categorical and list features; InputBlockV2 adds the continuous ones.
    embeddings = mm.Embeddings(schema.select_by_tag(Tags.CATEGORICAL), dim=sizes, l2_batch_regularization_factor=config.l2_reg)
    regularizer = tf.keras.regularizers.l2(config.mlp_l2) if config.mlp_l2 else None
    mlp = mm.MLPBlock(
        list(dims), no_activation_last_layer=True, dropout=config.dropout or None, kernel_regularizer=regularizer
    )
    return mm.Encoder(mm.InputBlockV2(schema, categorical=embeddings), mlp, post=mm.L2Norm() if config.normalize else None)


def build_model(schema, config: BuildConfig, item_probs: np.ndarray | None, catalog: pd.DataFrame | None = None):
    """Build and compile the Two-Tower model (or, with ``config.model == "mf"``, matrix factorization).

    The query tower encodes the features tagged USER, the item tower those tagged ITEM;
    embedding sizes follow the cardinalities; the loss is categorical cross-entropy over
    in-batch negatives, plus ``config.negatives`` catalog rows run through the item tower when
    ``catalog`` is given, logQ-corrected when ``item_probs`` is given; with ``config.loss ==
    "ccl"`` it is SimpleX's cosine contrastive loss instead (no temperature, no logQ). The MF baseline keeps only
    the user and item id embeddings (size: the last query-tower layer) under the same loss.

    Args:
        schema: schema of the transformed training data.
        config: build configuration (tower sizes, optimizer, regularization, temperature).
        item_probs: ``[cardinality of item_id]`` probability of each id among a step's
            candidates (``item_probabilities``, or ``contrastive.mixture_probabilities`` with
            catalog negatives), or None.
        catalog: encoded item features, one row per catalog item: the Two-Tower's catalog
            negatives are drawn from it (needs ``config.negatives > 0``).
    """
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.models.tf.outputs.base import DotProduct
    from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
    from merlin.schema import Tags

    user_schema = schema.select_by_tag(Tags.USER)
    item_schema = schema.select_by_tag(Tags.ITEM)
    item_id_schema = item_schema.select_by_tag(Tags.ITEM_ID)
    ccl = config.loss == "ccl" and config.model != "mf"
    samplers, item_encoder = ["in-batch"], None
    if catalog is not None and config.model != "mf":
        from build_ensemble.contrastive import CatalogSampler

        item_encoder = _encoder(item_schema, config.item_tower_dims, config)
        sampler = CatalogSampler(catalog, item_schema, config.negatives, item_encoder)
        # SimpleX's loss has no logQ term: its negatives are the uniform draws alone.
        samplers = [sampler] if ccl else [*samplers, sampler]
    post = None
    if item_probs is not None and not ccl:
        # Logits are divided by the temperature after this correction, so scale it to match.
        post = PopularityLogitsCorrection(
            item_probs.astype(np.float32),
            is_prob_distribution=True,
            reg_factor=config.temperature * config.logq_weight,
            schema=item_schema,
        )
    outputs = mm.ContrastiveOutput(
        DotProduct(),
        negative_samplers=samplers,
        schema=item_id_schema,
        logits_temperature=1.0 if ccl else config.temperature,
        post=post,
        store_negative_ids=True,
    )
    if config.model == "mf":
        model = mm.MatrixFactorizationModelV2(
            schema, dim=config.query_tower[-1], embeddings_l2_batch_regularization=config.l2_reg, outputs=outputs
        )
    else:
        model = mm.TwoTowerModelV2(
            _encoder(user_schema, config.query_tower, config),
            item_encoder or _encoder(item_schema, config.item_tower_dims, config),
            outputs=outputs,
        )
    optimizers = {
        "adam": tf.keras.optimizers.Adam,
        "adagrad": tf.keras.optimizers.Adagrad,
        "sgd": tf.keras.optimizers.SGD,
    }
    # metrics=[]: Merlin's default in-batch top-k metrics cost ~14% of training time and are not
    # used (validation is the full-catalog evaluation in `fit`).
    loss = "categorical_crossentropy"
    if ccl:
        from build_ensemble.contrastive import CosineContrastiveLoss

        loss = CosineContrastiveLoss(config.ccl_margin, config.ccl_negative_weight)
    model.compile(optimizer=optimizers[config.optimizer](learning_rate=config.learning_rate), loss=loss, metrics=[])
    return model


def _loader(path_or_df, batch_size: int, shuffle: bool, schema=None):
    import merlin.models.tf as mm
    from merlin.io import Dataset

    if isinstance(path_or_df, pd.DataFrame):
        dataset = Dataset(path_or_df, cpu=True, schema=schema)
    else:
        dataset = Dataset(str(path_or_df), engine="parquet", cpu=True)
    return mm.Loader(dataset, batch_size=batch_size, shuffle=shuffle)


def embed(encoder, table: pd.DataFrame, schema, batch_size: int = EMBED_BATCH_SIZE) -> np.ndarray:
    """Run one tower over an encoded table.

    Args:
        encoder: ``model.query_encoder`` or ``model.candidate_encoder``.
        table: encoded features, one row per entity (``workflow.encode`` output).
        schema: schema of the tower's inputs.
        batch_size: rows per call.

    Returns:
        ``[len(table), dim]`` float32 embeddings in the table's row order.
    """
    loader = _loader(table, batch_size, shuffle=False, schema=schema)
    parts = [encoder(features).numpy() for features, _ in loader]
    return np.concatenate(parts).astype(np.float32)


def train_model(
    config: BuildConfig,
    train_dir: Path,
    validate: Callable[[object], dict],
    monitor: str,
    progress: Callable[[dict], None] | None = None,
    batch_progress: Callable[[int], Callable[[int], None] | None] | None = None,
    catalog: pd.DataFrame | None = None,
) -> TrainResult:
    """Train epoch by epoch, score the validation set after each, keep the best weights.

    With ``config.average_epochs`` N > 1, what is scored and kept after each epoch is the mean
    of the last N epochs' weights (Polyak / stochastic weight averaging); training itself goes
    on from each epoch's own weights.

    Args:
        config: build configuration.
        train_dir: transformed training parquet parts (clicked interactions only).
        validate: called with the model after each epoch; returns validation metrics.
        monitor: metric of ``validate`` to maximise (early stopping).
        progress: optional callback receiving each epoch's record.
        batch_progress: optional; called with the number of batches before each epoch, returns
            a callable advanced by one per batch (a progress bar) or None.
        catalog: encoded item features, one row per catalog item; with ``config.negatives``,
            the Two-Tower also draws that many of them per step as negatives.
    """
    import tensorflow as tf
    from merlin.io import Dataset
    from merlin.schema import Tags

    tf.keras.utils.set_random_seed(config.seed)
    dataset = Dataset(str(train_dir), engine="parquet", cpu=True)
    schema = dataset.schema
    item_id = schema.select_by_tag(Tags.ITEM_ID).first
    probs = None
    if config.logq:
        ids = read_parts(train_dir, [item_id.name])[item_id.name].to_numpy()
        probs = item_probabilities(ids, item_id.int_domain.max + 1)
    catalog = catalog if config.negatives and config.model != "mf" else None
    if probs is not None and catalog is not None:
        from build_ensemble.contrastive import mixture_probabilities

        probs = mixture_probabilities(probs, catalog[item_id.name].to_numpy(), config.batch_size, config.negatives)
    model = build_model(schema.excluding_by_name([C.CLICK]), config, probs, catalog)
    loader = _loader(train_dir, config.batch_size, shuffle=True)

    result = TrainResult(model)
    window = WeightWindow(config.average_epochs)
    averaging = window.size > 1  # off: no copies of the weights (a large catalog's table is big)
    best, best_weights, waited, examples, train_seconds = -np.inf, None, 0, 0, 0.0
    n_rows = dataset.num_rows
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        tick = batch_progress(len(loader)) if batch_progress else None
        callbacks = [tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_: tick(1))] if tick else []
        fit = model.fit(loader, epochs=1, verbose=0, callbacks=callbacks)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        examples += n_rows
        record = {"epoch": epoch, "loss": float(fit.history["loss"][-1]), "seconds": round(seconds, 2)}
        if averaging:
            raw = model.get_weights()
            window.add(raw)
            model.set_weights(window.mean())  # validated and kept: the mean of the window's epochs
        record.update(validate(model))
        result.history.append(record)
        if progress:
            progress(record)
        improved = record[monitor] > best
        if improved:
            best, best_weights, waited, result.best_epoch = record[monitor], model.get_weights(), 0, epoch
        if averaging:
            model.set_weights(raw)  # training goes on from the epoch's own weights, not their mean
        if not improved:
            waited += 1
            if waited >= config.patience:
                logger.info("early stop after epoch %d (best %d)", epoch, result.best_epoch)
                break
    model.set_weights(best_weights)
    result.examples_per_second = examples / train_seconds if train_seconds else 0.0
    return result


class WeightWindow:
    """The weights of the last ``size`` epochs and their element-wise mean (weight averaging;
    size 0 or 1: the last epoch's own weights)."""

    def __init__(self, size: int):
        self.size, self.kept = max(1, size), []

    def add(self, weights: list) -> None:
        """Keep one epoch's ``model.get_weights()``, dropping the oldest beyond ``size``."""
        self.kept = [*self.kept, weights][-self.size:]

    def mean(self) -> list:
        """The mean of the kept epochs, array by array; arrays that are not floating point (flags,
        counters) are the last epoch's."""
        return [np.mean(arrays, axis=0).astype(arrays[-1].dtype) if np.issubdtype(arrays[-1].dtype, np.floating)
                else arrays[-1] for arrays in zip(*self.kept)]


def save_towers(model, run_dir: Path) -> tuple[Path, Path]:
    """Save the query and item towers as TensorFlow SavedModels."""
    query_dir, item_dir = run_dir / C.QUERY_TOWER_DIR, run_dir / C.ITEM_TOWER_DIR
    model.query_encoder.save(str(query_dir), include_optimizer=False)
    model.candidate_encoder.save(str(item_dir), include_optimizer=False)
    return query_dir, item_dir
