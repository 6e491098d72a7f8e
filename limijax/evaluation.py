"""Inference and scoring: the predict function, the shapes a split is evaluated in,
:func:`evaluate_source` (the field's metrics of a split), :func:`evaluate_workdir` (a run's
best checkpoint on its test or validation split) and the top-hat floor.

Evaluation images keep their size. A split's sizes, each padded to a multiple of 16, are
grouped into at most :data:`EVAL_SHAPES` shapes (:func:`shape_buckets`), so at most that
many programs are compiled; each image is told its own size (``valid_hw``), so its
prediction is the one it would get alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import weakref

import jax
from jax import lax
import numpy as np
from tqdm import tqdm

from limijax import data as data_lib
from limijax import input_pipeline
from limijax import metrics as metrics_lib
from limijax import model as model_lib
from limijax.errors import UserError
from limijax.workdir import load_run


# On a CPU, inference runs a batch through the model this many images at a time, one
# group after another (``lax.map``). Each layer's tensors then stay small enough for the
# caches: on a 2-core CPU a batch of 16 at 256x256 took 0.75-0.87x the time of the whole
# batch at once (groups of 2: 0.86-0.89x; 8: 0.85-0.91x). A GPU runs the whole batch.
INFER_CHUNK = 4


def infer_chunk(batch: int, backend: str | None = None) -> int:
  """How many images of a batch of ``batch`` run through the model together: on a CPU
  the largest divisor of ``batch`` up to :data:`INFER_CHUNK` (so every group has the
  same shape and the model is compiled once), elsewhere the whole batch."""
  if (backend or jax.default_backend()) != 'cpu' or batch <= INFER_CHUNK:
    return batch
  return max(d for d in range(1, INFER_CHUNK + 1) if batch % d == 0)


def new_predict(model):
  """A new jitted inference ``(params, model_state, image[, valid_hw, valid_masks]) ->
  logits``, with compilations of its own. ``valid_hw`` ((N, 2) int32): each image's own
  size inside a batch padded beyond it, ``valid_masks`` its
  :func:`limijax.kernels.valid.valid_masks` (:meth:`limijax.model.LimiNet.__call__`). On a CPU
  the batch runs :func:`infer_chunk` images at a time; each image's logits are those of
  the whole batch at once to float rounding (the model treats every image alone)."""
  @jax.jit
  def predict(params, model_state, image, valid_hw=None, valid_masks=None):
    variables = {'params': params, **model_state}

    def run(args):
      x, hw, masks = args
      return model.apply(variables, x, train=False, valid_hw=hw, valid_masks=masks)

    n = image.shape[0]
    k = infer_chunk(n)
    if k == n:
      return run((image, valid_hw, valid_masks))
    groups = jax.tree.map(lambda a: a.reshape((n // k, k) + a.shape[1:]),
                          (image, valid_hw, valid_masks))
    out = lax.map(run, groups)
    return out.reshape((n,) + out.shape[2:])
  return predict


@functools.lru_cache(maxsize=16)
def make_predict(model):
  """:func:`new_predict`, one per model in a process."""
  return new_predict(model)


def scoring_threads() -> int:
  """Host threads that score evaluated images: up to 4, one per core. Labelling the
  components of a mask (scipy) releases the GIL for much of its time: on a 2-core CPU two
  threads scored 424 images of 256x256 in two thirds of one thread's time."""
  return max(1, min(4, os.cpu_count() or 1))


EVAL_SHAPES = 4  # at most this many padded shapes (programs) per evaluation


def shape_buckets(counts: dict[tuple[int, int], int], max_shapes: int = EVAL_SHAPES
                  ) -> dict[tuple[int, int], tuple[int, int]]:
  """Each padded (H, W) of ``counts`` (images of that shape) -> the shape it is evaluated
  at: at most ``max_shapes`` shapes, each as large as the largest of its members in
  both sides. Starting from one shape per size, the two groups whose merging adds the
  fewest padded pixels (over all their images) merge, until ``max_shapes`` remain; ties go
  to the smaller shapes, so the plan depends on the sizes alone."""
  if max_shapes < 1:
    raise ValueError(f'max_shapes must be >= 1, got {max_shapes}')
  groups = [([shape], shape, n) for shape, n in sorted(counts.items())]

  def pixels(g):
    return g[2] * g[1][0] * g[1][1]

  while len(groups) > max_shapes:
    best = None
    for i in range(len(groups)):
      for j in range(i + 1, len(groups)):
        a, b = groups[i], groups[j]
        shape = (max(a[1][0], b[1][0]), max(a[1][1], b[1][1]))
        merged = (a[0] + b[0], shape, a[2] + b[2])
        cost = pixels(merged) - pixels(a) - pixels(b)
        if best is None or cost < best[0]:
          best = (cost, i, j, merged)
    _, i, j, merged = best
    groups = [g for k, g in enumerate(groups) if k not in (i, j)] + [merged]
  return {member: shape for members, shape, _ in groups for member in members}


def shape_plan(counts: dict[tuple[int, int], int], max_shapes: int = EVAL_SHAPES
               ) -> tuple[dict[tuple[int, int], tuple[int, int]], set[tuple[int, int]]]:
  """``(plan, masked)``: :func:`shape_buckets` of ``counts``, and the shapes that hold
  other sizes than their own, which run with ``valid_hw`` (:func:`predict_in_shape`)."""
  plan = shape_buckets(counts, max_shapes)
  return plan, {shape for size, shape in plan.items() if size != shape}


def predict_in_shape(predict, params, model_state, images, shape: tuple[int, int],
                     masked: bool):
  """``predict``'s logits for ``images`` ((1, H, W, 1) each, H and W at most ``shape``'s)
  zero-padded into one batch of ``shape``; with ``masked`` the model is told each image's
  own size (``valid_hw`` and its host-made ``valid_masks``), so each one's logits equal
  those of the image alone to float rounding."""
  h, w = shape
  batch = np.zeros((len(images), h, w, 1), np.float32)
  for j, image in enumerate(images):
    batch[j, :image.shape[1], :image.shape[2]] = image[0]
  if not masked:
    return predict(params, model_state, batch)
  valid = np.array([image.shape[1:3] for image in images], np.int32)
  return predict(params, model_state, batch, valid, model_lib.valid_masks(valid, h, w))


_SIZE_COUNTS = weakref.WeakKeyDictionary()  # source -> {(len, multiple): counts}


def _padded_size_counts(source, multiple: int) -> dict[tuple[int, int], int]:
  """How many images of ``source`` have each padded (H, W): a pass that decodes every
  record, kept per source object where it can be (a
  dataset's validation split is evaluated again and again; plain lists cannot be kept)."""
  key = (len(source), multiple)
  try:
    return dict(_SIZE_COUNTS[source][key])
  except (KeyError, TypeError):
    pass
  counts = collections.Counter(input_pipeline.padded_size(source[i], multiple)
                               for i in range(len(source)))
  try:
    _SIZE_COUNTS.setdefault(source, {})[key] = dict(counts)
  except TypeError:  # not weakly referable (a list): measured again next time
    pass
  return dict(counts)


def evaluate_source(predict, params, model_state, source, mean: float, std: float,
                    desc: str = 'eval', progress: bool = True, batch_size: int = 16,
                    multiple: int = 16, max_shapes: int = EVAL_SHAPES,
                    keep: dict | None = None) -> dict:
  """The field's metrics of the model on every image of ``source`` at its own size.

  Each image is normalised and padded at the bottom/right to a multiple of `multiple`,
  as one image at a time would be. The padded sizes are then grouped into at most
  ``max_shapes`` shapes (:func:`shape_buckets`), so the model compiles at most that many
  times whatever the number of sizes: an image smaller than its group's shape is padded
  further with zeros, and ``predict`` gets every image's own padded size (``valid_hw``,
  :meth:`limijax.model.LimiNet.__call__`), so that its outputs equal those of the image
  alone to float rounding. A group whose images all have its shape runs without
  ``valid_hw`` (nothing to mask). Images of a group are stacked into batches of
  `batch_size`; the last batch is filled with copies of its last image, whose outputs are
  dropped (every sample is normalised on its own, so they change nothing); a group with
  fewer images than `batch_size` runs one image at a time. The sizes come from a first
  pass over ``source``, kept for later evaluations of the same source object. While the device
  works on later batches, :func:`scoring_threads` host threads score the earlier ones
  (thresholding, connected components); per-image sums are added in the images' order,
  so the result equals scoring the images one at a time.

  ``predict(params, model_state, images[, valid_hw, valid_masks])``: :func:`make_predict`'s.
  With ``keep`` (a dict) each image's logits at its own size, float32 (H, W), are kept
  there under its index in ``source``.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  counts = _padded_size_counts(source, multiple)
  plan, masked = shape_plan(counts, max_shapes)
  group_count = collections.Counter()
  for size, shape in plan.items():
    group_count[shape] += counts[size]
  # A group with fewer images than a batch runs one image at a time: the batch-1 program
  # then serves every such group of that shape, in every split (validation and test).
  group_batch = {shape: batch_size if n >= batch_size else 1
                 for shape, n in group_count.items()}

  acc = metrics_lib.MetricAccumulator()
  done: dict[int, metrics_lib.MetricAccumulator] = {}
  next_index = [0]
  buckets: dict[tuple, list[dict]] = {}
  in_flight: list[tuple[list[dict], concurrent.futures.Future]] = []
  threads = scoring_threads()

  def score(group: list[dict], logits) -> list[tuple[int, metrics_lib.MetricAccumulator]]:
    logits = np.asarray(logits)  # waits for the device
    out = []
    for j, ex in enumerate(group):
      one = metrics_lib.MetricAccumulator()
      own = input_pipeline.crop_to_size(logits[j, ..., 0], ex['size'])
      if keep is not None:
        keep[ex['index']] = np.array(own, np.float32)
      one.update(metrics_lib.binarize_logits(own), ex['mask'])
      out.append((ex['index'], one))
    return out

  def dispatch(shape: tuple, group: list[dict]) -> None:
    fill = [group[-1]] * (group_batch[shape] - len(group))
    logits = predict_in_shape(predict, params, model_state,
                              [ex['image'] for ex in group + fill], shape, shape in masked)
    in_flight.append((group, pool.submit(score, group, logits)))
    while len(in_flight) > 2 * threads:
      collect_oldest()

  def collect_oldest() -> None:
    group, future = in_flight.pop(0)
    done.update(future.result())
    while next_index[0] in done:  # sums in the images' order: float sums are exact
      acc.merge(done.pop(next_index[0]))
      next_index[0] += 1
    bar.update(len(group))

  bar = tqdm(total=len(source), desc=desc, leave=False, disable=not progress)
  with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='limijax-score') as pool:
    for i, ex in enumerate(input_pipeline.eval_examples(source, mean=mean, std=std,
                                                        multiple=multiple)):
      ex['index'] = i
      shape = plan[tuple(ex['image'].shape[1:3])]
      group = buckets.setdefault(shape, [])
      group.append(ex)
      if len(group) == group_batch[shape]:
        dispatch(shape, buckets.pop(shape))
    for shape in list(buckets):
      dispatch(shape, buckets.pop(shape))
    while in_flight:
      collect_oldest()
  bar.close()
  assert not done and next_index[0] == len(source), 'every image is scored once'
  return acc.result()


def evaluate_workdir(workdir: str, split: str = 'test') -> dict:
  if split not in ('test', 'val'):
    raise UserError(f'--split must be test or val, got {split!r}')
  run = load_run(workdir)
  dataset = data_lib.load_dataset(run.config.data)
  return evaluate_source(make_predict(run.model), run.params, run.model_state,
                         getattr(dataset, split), run.mean, run.std, desc=split,
                         batch_size=run.config.eval_batch_size)


def split_logits(workdir: str, split: str = 'test') -> tuple[list[dict], dict]:
  """The best checkpoint of the run in ``workdir`` on its ``split``: one record per image
  in the split's order (``id``, ``image`` uint8 (H, W), ``mask`` bool (H, W) and
  ``logits`` float32 (H, W), each at the image's own size) and the split's METRICS,
  exactly :func:`evaluate_workdir`'s (thresholding the logits at 0 gives them again)."""
  if split not in ('test', 'val'):
    raise UserError(f'--split must be test or val, got {split!r}')
  run = load_run(workdir)
  source = getattr(data_lib.load_dataset(run.config.data), split)
  kept: dict[int, np.ndarray] = {}
  result = evaluate_source(make_predict(run.model), run.params, run.model_state, source,
                           run.mean, run.std, desc=split,
                           batch_size=run.config.eval_batch_size, keep=kept)
  records = []
  for i in range(len(source)):
    r = source[i]
    records.append({'id': str(r.get('id', i)), 'image': input_pipeline.plane(r['image']),
                    'mask': input_pipeline.plane(r['mask']) > 0, 'logits': kept.pop(i)})
  return records, result


def tophat_floor(dataset) -> dict:
  """The white top-hat detector tuned on ``dataset``'s validation split and scored on
  its test split: the floor every run is compared with (``results.json``'s baselines)."""
  from limijax import baselines  # pylint: disable=g-import-not-at-top

  def arrays(src):
    items = [src[i] for i in range(len(src))]
    return [it['image'] for it in items], [np.asarray(it['mask'], bool) for it in items]

  vi, vm = arrays(dataset.val)
  ti, tm = arrays(dataset.test)
  tuned = baselines.tune_tophat(vi, vm)
  result = baselines.tophat_metrics(ti, tm, tuned['size'], tuned['k'])
  return {**result, 'size': tuned['size'], 'k': tuned['k'], 'val_miou': tuned['val_miou']}
