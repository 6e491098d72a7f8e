"""Limi-Net's architecture constants, in one place for the flax model
(:mod:`limijax.model`), its PyTorch twin (:mod:`limijax.torch_twin`) and the ONNX runner,
without importing JAX or torch."""

import math

# The values of the config keys that choose a variant (paper Table 2's ablations).
STEMS = ('ses', 'dsconv_bn')  # "w/o SES": dsconv_bn
BLOCKS = ('lmb', 'residual')  # "w/o LMB": residual
UPSAMPLERS = ('huf', 'bilinear')  # "w/o HUF": bilinear
HEADS = ('c2f', 'fpn')  # "w/o C2F": fpn
# The model config keys that define the architecture (``model.depthwise`` only picks how
# flax computes a depthwise convolution).
MODEL_KEYS = ('channels', 'stem_channels', 'in_channels', 'stem', 'block', 'upsampler',
              'head')
STRIDE = 16  # total downsampling of the encoder: input sides must be multiples of it
GN_EPS = 1e-5  # PyTorch's GroupNorm default, so exported weights compute the same thing
BN_EPS = 1e-5  # the "w/o SES" stem's BatchNorm: PyTorch's defaults
BN_MOMENTUM_TORCH = 0.1  # = flax momentum 0.9
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # logit biases start at background (p = 0.01)
