"""limijax: Limi-Net (Light but Mighty, ICIC 2025) for infrared small target detection in JAX/Flax."""

__version__ = "0.1.0"
