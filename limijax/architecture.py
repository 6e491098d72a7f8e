"""Limi-Net's architecture constants, in one place for the flax model
(:mod:`limijax.model`), its PyTorch twin (:mod:`limijax.torch_twin`) and the ONNX runner,
without importing JAX or torch."""

import math

# The values of the config keys that choose a variant (paper Table 2's ablations).
STEMS = ('ses', 'dsconv_bn')  # "w/o SES": dsconv_bn
BLOCKS = ('lmb', 'residual')  # "w/o LMB": residual
UPSAMPLERS = ('huf', 'bilinear')  # "w/o HUF": bilinear
HEADS = ('c2f', 'fpn')  # "w/o C2F": fpn
# The normalisation of every block outside SES: GroupNorm (the default), or BatchNorm as
# the paper's contrast with "batch normalization" (3.3) may imply.
NORMS = ('group', 'batch')
# The model config keys that define the architecture (``model.depthwise`` only picks how
# flax computes a depthwise convolution).
MODEL_KEYS = ('channels', 'stem_channels', 'in_channels', 'stem', 'block', 'upsampler',
              'head', 'norm')
STRIDE = 16  # total downsampling of the encoder: input sides must be multiples of it
GN_EPS = 1e-5  # PyTorch's GroupNorm default, so exported weights compute the same thing
BN_EPS = 1e-5  # BatchNorm (the "w/o SES" stem, model.norm='batch'): PyTorch's defaults
BN_MOMENTUM_TORCH = 0.1
BN_MOMENTUM_FLAX = 1 - BN_MOMENTUM_TORCH  # the same running averages in flax's convention
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # logit biases start at background (p = 0.01)
