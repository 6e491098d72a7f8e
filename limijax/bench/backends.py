"""The libraries a bench run compares (JAX always; PyTorch and onnxruntime when installed)
and the models they share."""

from __future__ import annotations

import copy
import importlib
import os
import shutil
import tempfile

import numpy as np

from limijax.errors import UserError


class Backends:
  """The optional libraries and the models every row shares."""

  def __init__(self, config, params, model_state, torch_device: str, torch_compile: bool):
    self.config, self.params, self.model_state = config, params, model_state
    self.torch = self.ort = None
    self.torch_reason = self.ort_reason = self.compile_reason = None
    self.device = torch_device
    self.tmp = tempfile.mkdtemp(prefix='limijax-bench-')
    self._session = self._eval_net = self._compiled_eval = None
    try:
      import torch  # pylint: disable=g-import-not-at-top
      self.torch = torch
    except ImportError:
      self.torch_reason = 'torch is not installed (pip install -e ".[torch]")'
    if self.torch is not None and torch_device == 'cuda' and not self.torch.cuda.is_available():
      raise UserError('--torch_device=cuda: torch sees no CUDA device')
    if self.torch is None:
      self.ort_reason = 'exporting the ONNX graph needs torch'
    else:
      try:
        importlib.import_module('onnx')  # the exporter needs it; only its presence counts
        self.ort = importlib.import_module('onnxruntime')
      except ImportError as e:
        self.ort_reason = f'{e.name} is not installed (pip install -e ".[torch]")'
    if not torch_compile:
      self.compile_reason = 'skipped (--no_torch_compile)'
    elif self.torch is None:
      self.compile_reason = self.torch_reason

  def close(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)

  def sync(self) -> None:
    if self.device == 'cuda':
      self.torch.cuda.synchronize()

  def twin(self, train: bool):
    from limijax import torch_convert, torch_twin  # pylint: disable=g-import-not-at-top
    net = torch_twin.build(self.config)
    net.load_state_dict(torch_convert.flax_to_state_dict(self.params, self.model_state,
                                                         self.config))
    return net.train(train).to(self.device)

  def tensor(self, nhwc: np.ndarray):
    return self.torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))).to(
        self.device)

  def eval_nets(self):
    """(eager, compiled or None) twins in eval mode, shared by every inference row."""
    if self._eval_net is None:
      self._eval_net = self.twin(train=False)
      if self.compile_reason is None:
        # dynamic=False: one graph per input shape, as JAX compiles one per shape.
        self._compiled_eval = self.torch.compile(copy.deepcopy(self._eval_net), dynamic=False)
    return self._eval_net, self._compiled_eval

  def session(self):
    if self._session is None:
      from limijax import export  # pylint: disable=g-import-not-at-top
      path = os.path.join(self.tmp, 'model.onnx')
      export.write_onnx(path, self.params, self.model_state, export.model_config(self.config),
                        0.0, 1.0)
      providers = ['CPUExecutionProvider']
      if self.device == 'cuda' and 'CUDAExecutionProvider' in self.ort.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
      self._session = self.ort.InferenceSession(path, providers=providers)
    return self._session
