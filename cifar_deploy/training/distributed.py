"""``--strategy multi-worker``: one training run over several machines (or processes), with
``tf.distribute.MultiWorkerMirroredStrategy`` and the standard ``TF_CONFIG`` cluster spec.

Keras 3's ``fit`` does not run under this strategy (it fails converting ``PerReplica`` values,
keras-team/keras#20585), so the run is a custom training loop with the same recipe, data,
augmentation, loss, optimizer, schedule, run files and checkpoints as ``fit``: every worker
takes its share of each global batch (``--batch-size`` is the global batch, so the result does
not depend on the number of workers), Keras' TensorFlow optimizer all-reduces the gradients,
BatchNorm's moving statistics are averaged over the workers after every epoch,
and every worker ends with the same weights. The chief (task 0) writes ``runs/<model>/``; the
other workers write their own copy to ``runs/<model>/worker-<i>/`` (on separate machines, each
its own disk; on one machine, out of the chief's way), which shows that the weights agree.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _tf
from ..errors import InvalidOptionError


@dataclass(frozen=True)
class Cluster:
    workers: int
    index: int

    @property
    def chief(self) -> bool:
        return self.index == 0


def cluster_from_env(environ=os.environ) -> Cluster:
    """This process's place in the cluster ``TF_CONFIG`` describes (workers only; the first
    worker is the chief, as in TensorFlow's convention without a "chief" job)."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise InvalidOptionError(
            "--strategy multi-worker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}; it is not set'
        )
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]["worker"]
        task = spec["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidOptionError(
            f"TF_CONFIG must be JSON with cluster.worker (a list of host:port) and task.index; "
            f"received {raw[:200]!r} ({exc.__class__.__name__})"
        ) from None
    if set(spec["cluster"]) - {"worker"} or task.get("type") != "worker":
        raise InvalidOptionError(
            f"TF_CONFIG: only a cluster of workers is supported (the first is the chief); "
            f"received jobs {sorted(spec['cluster'])} and task type {task.get('type')!r}"
        )
    if not isinstance(workers, list) or not 0 <= index < len(workers):
        raise InvalidOptionError(
            f"TF_CONFIG: task.index must be in 0..{len(workers) - 1}, received {index}"
        )
    return Cluster(workers=len(workers), index=index)


def run_dir_of(config, spec_name: str, cluster: Cluster) -> Path:
    run_dir = Path(config.runs_dir) / spec_name
    return run_dir if cluster.chief else run_dir / f"worker-{cluster.index}"


def _replica_step(model, optimizer, loss_fn, global_batch: int):
    """One replica's step: loss averaged over the global batch (plus the L2 terms, scaled by
    the number of replicas), gradients applied (the optimizer all-reduces them)."""
    tf = _tf.tf()

    def step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                loss_fn(labels, probs), global_batch_size=global_batch
            )
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        hits = tf.reduce_sum(
            tf.cast(tf.argmax(probs, axis=1) == tf.argmax(labels, axis=1), tf.float32)
        )
        return loss, hits

    return step


def _statistics_sync(model, strategy):
    """A function that sets every worker's non-trainable weights (BatchNorm's moving mean and
    variance, which each worker updates from its own share of the batch) to their mean over
    the workers, so that validation, checkpoints and every worker's copy agree."""
    tf = _tf.tf()
    weights = [w for w in model.non_trainable_weights if "float" in str(w.dtype)]

    @tf.function
    def mean_over_workers():
        def replica():
            context = tf.distribute.get_replica_context()
            values = [tf.identity(w.value) for w in weights]
            return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)

        return strategy.experimental_local_results(strategy.run(replica))[0]

    def sync() -> None:
        if weights:
            for weight, value in zip(weights, mean_over_workers()):
                weight.assign(value)

    return sync


def _evaluate(model, loss_fn, x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, on this worker alone (its weights are the
    same as every other worker's)."""
    keras = _tf.keras()
    losses, hits = [], 0
    for i in range(0, len(y), batch):
        images = x[i : i + batch].astype(np.float32)
        labels = keras.ops.one_hot(y[i : i + batch], 10)
        probs = model(images, training=False)
        losses.append(float(np.sum(np.asarray(loss_fn(labels, probs)))))
        hits += int(np.sum(np.asarray(probs).argmax(1) == y[i : i + batch]))
    return sum(losses) / len(y), hits / len(y)


def fit_phases(model, phases, recipe, splits, recorder, spec, strategy, seed: int) -> None:
    """Every phase's epochs, as ``fit`` would run them, with ``recorder`` writing the run."""
    from .recipes import make_optimizer, train_dataset
    from .trainer import _set_trainable

    tf, keras = _tf.tf(), _tf.keras()
    (x_tr, y_tr), (x_val, y_val) = splits
    global_batch = recipe.batch_size
    if len(y_tr) < global_batch:
        raise InvalidOptionError(
            f"--strategy multi-worker needs at least one full global batch of {global_batch} "
            f"training images, received {len(y_tr)}"
        )
    steps = len(y_tr) // global_batch
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = train_dataset(x_tr, y_tr, recipe, seed).with_options(options).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    loss_fn = keras.losses.CategoricalCrossentropy(
        label_smoothing=recipe.label_smoothing, reduction=None
    )
    sync_statistics = _statistics_sync(model, strategy)
    epoch = 0
    for phase in phases:
        _set_trainable(spec, model, phase, recipe)
        with strategy.scope():
            optimizer = make_optimizer(phase, steps)
            optimizer.build(model.trainable_variables)
        model.optimizer = optimizer  # the recorder reads the rate from it
        replica = _replica_step(model, optimizer, loss_fn, global_batch)

        @tf.function
        def train_step(batches, replica=replica):
            loss, hits = strategy.run(replica, args=batches)
            reduce = tf.distribute.ReduceOp.SUM
            return strategy.reduce(reduce, loss, axis=None), strategy.reduce(reduce, hits, None)

        for _ in range(phase.epochs):
            recorder.begin_epoch()
            loss_sum, hits = 0.0, 0.0
            for _ in range(steps):
                loss, hit = train_step(next(iterator))
                loss_sum, hits = loss_sum + float(loss), hits + float(hit)
                recorder.count_step()
            sync_statistics()
            val_loss, val_acc = _evaluate(model, loss_fn, x_val, y_val, global_batch)
            epoch += 1
            logs = {
                "loss": loss_sum / steps,
                "accuracy": hits / (steps * global_batch),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
            recorder.end_epoch(epoch, phase.name, logs)


def train_multi_worker(config):
    """``train()`` for ``--strategy multi-worker``; every worker runs this with its TF_CONFIG."""
    from ..data import load_cifar10
    from . import trainer as t
    from .registry import get_model_spec

    cluster = cluster_from_env()
    if config.time_budget is not None:
        raise InvalidOptionError(
            "--time-budget does not combine with --strategy multi-worker yet (the workers would "
            "have to agree when time is up); use --epochs"
        )
    started = time.perf_counter()
    keras = _tf.keras()
    # The strategy first: collective ops must be configured before TensorFlow runs anything.
    strategy = _tf.tf().distribute.MultiWorkerMirroredStrategy()
    spec = get_model_spec(config.model)
    recipe = config.recipe or spec.recipe
    recipe.validate()
    kwargs = t._builder_kwargs(spec, recipe, config)
    keras.utils.set_random_seed(config.seed)
    data = load_cifar10(config.data_dir)
    splits = t._splits(config, recipe, data)
    run_dir = run_dir_of(config, spec.name, cluster)
    run_dir.mkdir(parents=True, exist_ok=True)
    policy = t.resolve_precision(recipe.mixed_precision)
    if policy == "mixed_float16":
        policy = "float32"  # fp16 needs loss scaling, which this loop does not do
    sizes = (int(len(splits[0][1])), int(len(splits[1][1])))
    info = t._run_info(config, spec, recipe, policy, strategy, kwargs, data, sizes)
    info.update(workers=cluster.workers, worker_index=cluster.index)
    recorder = t.RunRecorder(run_dir, info, started)
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        model, twin = t._build(spec, kwargs, policy, strategy)
        if twin is model:  # checkpoints come from a plain (not distributed) copy
            twin = spec.build(**({**kwargs, "weights": None} if spec.accepts_weights else kwargs))
        recorder.model, recorder.twin = model, twin
        phases = [p for p in recipe.phases if p.epochs > 0]
        fit_phases(model, phases, recipe, splits, recorder, spec, strategy, config.seed)
    except KeyboardInterrupt:
        raise recorder.interrupted() from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return recorder.result(*t._evaluate_best(recorder.best_path, data))
