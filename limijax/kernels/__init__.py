"""The fast forms of Limi-Net's operations, apart from the paper's blocks in
:mod:`limijax.model`.

Each computes what its plain form computes (the same parameters, the same values to float
rounding) in a way XLA runs faster, mostly on a CPU, and each is tested against that plain
form, outputs and gradients:

* :mod:`.depthwise` - depthwise convolutions as shifted sums (``shift``) beside XLA's
  grouped convolution (``grouped``, the plain form), the one-channel stem conv, the
  depthwise transposed conv, the 1x1 conv with its kernel gradient as one matrix product,
  and FastUp's bilinear upsampling folded into its separable conv
  (tests/test_depthwise.py);
* :mod:`.layers` - the convolution modules built on them, with flax ``nn.Conv``'s
  parameters; :class:`~.layers.Forms` chooses the depthwise form and whether 1x1 convs are
  matrix products (for ``vmap``-ed seeds) (tests/test_model.py, tests/test_depthwise.py);
* :mod:`.norm` - GroupNorm with the spatial sums read as rows of 16 values and the
  per-channel broadcast whose gradient sums over H first on a CPU (tests/test_model.py
  against ``flax.linen.GroupNorm``);
* :mod:`.valid` - images of several sizes in one padded batch: each image's valid part,
  masks and border handling (tests/test_eval_batched.py against each image alone);
* :mod:`.init` - every random initial value cut from two draws instead of one draw per
  parameter (tests/test_model.py against the same distributions).

Timings of each form: BENCHMARKS.md.
"""
