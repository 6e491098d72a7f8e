"""Reading image and mask files: the one reader that data, evaluate and predict share.

Every failure is a :class:`~limijax.errors.UserError` whose one-line message names the
file.

Images are returned as 8-bit grey, ``uint8`` of shape (H, W):

* 8-bit files (PIL modes ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``1``, ...) go through
  PIL's ``convert('L')``; colour is weighted ``L = (299 R + 587 G + 114 B) / 1000``, so a
  grey picture saved as RGB (NUDT-SIRST's files) keeps its values exactly.
* 16-bit and 32-bit integer files (modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``,
  ``I``), as infrared cameras write them: a **linear min-max stretch of the frame** to
  0..255, ``out = floor((v - lo) * 255 / (hi - lo) + 0.5)`` with ``lo``, ``hi`` the
  frame's own minimum and maximum (a constant frame becomes all 0). Such cameras store
  12- or 14-bit counts, usually in a narrow band of the 16-bit range: clipping (PIL's
  ``convert('L')``) would saturate the frame and dividing by 257 would leave it a few
  dozen grey levels. The stretch is per frame, so brightness is not comparable between
  two 16-bit frames. Predictions scored by ``limijax.evaluate`` are probabilities, not
  frames: there a 16-bit file is refused (``stretch_16bit=False``).
* 32-bit float files (mode ``F``): values all in [0, 1] become
  ``floor(v * 255 + 0.5)``; any other float file (a value outside [0, 1], or NaN) is
  refused, since its scale is unknown.

Masks are read as images (the same rules) and then binarised to ``uint8`` {0, 1}:

* a pixel is target when its value is ``> 127`` (0/255 masks and anti-aliased ones);
* a file whose values are all 0 or 1 is a 0/1 label image and is kept as it is;
* a file with more than 5 % of its pixels (and more than 16 pixels) strictly between 10
  and 245 is clearly not a binary mask (a grey image or a heat map) and is refused.

The field's reference code (BasicIRSTD) keeps only pixels *equal to* 255. A mask file
holding any value other than 0 and 255 (anti-aliased edges, 0/1 labels) can therefore be
scored differently there; :func:`read_mask_info` says whether a file does, and callers
print one :func:`non_binary_mask_warning` line per dataset or evaluation, never one per
file.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from limijax.errors import UserError

WIDE_INT_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')
FLOAT_MODES = ('F',)

# Mask values strictly between these two count as "mid" grey; a mask is refused when
# they are more than this share of its pixels and more than this many pixels. An
# anti-aliased 0/255 mask has mid values only on target edges.
_MID_LOW, _MID_HIGH, _MAX_MID_SHARE, _MAX_MID_ALWAYS = 10, 245, 0.05, 16


def open_image(path: str, what: str = 'image') -> Image.Image:
  """The decoded PIL image of ``path`` (pixels loaded, file closed)."""
  try:
    with Image.open(path) as im:
      im.load()  # PIL opens lazily: a truncated file only fails here
      return im.copy()
  except FileNotFoundError:
    raise UserError(f'{path}: no such {what} file') from None
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    raise UserError(f'{path}: cannot read {what} ({e})') from None


def image_size(path: str, what: str = 'image', *,
               stretch_16bit: bool = True) -> tuple[int, int]:
  """(width, height) from the file's header, without decoding the pixels.

  With ``stretch_16bit=False`` a 16-bit file is refused here already, as :func:`to_grey`
  would refuse it.
  """
  try:
    with Image.open(path) as im:
      if im.mode in WIDE_INT_MODES and not stretch_16bit:
        raise _wide_refused(path, what, im.mode)
      return im.size
  except UserError:
    raise
  except FileNotFoundError:
    raise UserError(f'{path}: no such {what} file') from None
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{path}: cannot read {what} ({e})') from None


def _wide_refused(path: str, what: str, mode: str) -> UserError:
  return UserError(f'{path}: {what} has 16/32-bit pixels (mode {mode}); '
                   f'save it as an 8-bit file')


def stretch(values: np.ndarray) -> np.ndarray:
  """Linear min-max stretch of a frame to uint8 0..255 (constant frame: all 0)."""
  a = np.asarray(values, dtype=np.float64)
  if not a.size:
    return np.zeros(a.shape, np.uint8)
  lo, hi = a.min(), a.max()
  if hi == lo:
    return np.zeros(a.shape, np.uint8)
  return np.floor((a - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)  # exact for integers


def to_grey(im: Image.Image, path: str, what: str = 'image', *,
            stretch_16bit: bool = True) -> np.ndarray:
  """A decoded image as uint8 (H, W) grey, by the rules of the module docstring."""
  if im.mode in WIDE_INT_MODES:
    if not stretch_16bit:
      raise _wide_refused(path, what, im.mode)
    return stretch(np.asarray(im))
  if im.mode in FLOAT_MODES:
    a = np.asarray(im, dtype=np.float64)
    if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
      raise UserError(f'{path}: {what} has float pixels (mode F) outside [0, 1]; '
                      f'save it as an 8-bit or 16-bit file')
    return np.floor(a * 255.0 + 0.5).astype(np.uint8)
  return np.asarray(im if im.mode == 'L' else im.convert('L'), dtype=np.uint8)


def read_image(path: str, what: str = 'image', *, stretch_16bit: bool = True) -> np.ndarray:
  """An image file as 8-bit grey, shape (H, W); UserError naming the file if it fails."""
  return to_grey(open_image(path, what), path, what, stretch_16bit=stretch_16bit)


def binarise_mask(values: np.ndarray, path: str) -> tuple[np.ndarray, bool]:
  """(uint8 {0, 1} mask, whether ``values`` held anything other than 0 and 255)."""
  a = np.asarray(values)
  if a.size and a.max() <= 1:  # a 0/1 label image (or an empty mask): kept as it is
    return a.astype(np.uint8), bool(a.max() == 1)
  mid = int(np.count_nonzero((a > _MID_LOW) & (a < _MID_HIGH)))
  if mid > max(_MAX_MID_SHARE * a.size, _MAX_MID_ALWAYS):
    raise UserError(f'{path}: not a binary mask ({100 * mid / a.size:.0f}% of its pixels '
                    f'are neither near 0 nor near 255)')
  other = bool(np.count_nonzero((a != 0) & (a != 255)))
  return (a > 127).astype(np.uint8), other


def read_mask_info(path: str) -> tuple[np.ndarray, bool]:
  """(mask file as uint8 {0, 1} (H, W), whether it held values other than 0 and 255)."""
  return binarise_mask(read_image(path, 'mask'), path)


def read_mask(path: str) -> np.ndarray:
  """A mask file as uint8 {0, 1}, shape (H, W); UserError naming the file if it fails."""
  return read_mask_info(path)[0]


# A mask of another size than its image is resized to it when their aspect ratios agree
# within this share (NUAA-SIRST's Misc_111: a 592x400 mask for a 325x220 image, 0.3 %).
MASK_ASPECT_TOLERANCE = 0.02


def mask_fits(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
  """Whether a mask of ``mask_hw`` can be resized to ``image_hw`` (H, W): the same size,
  or aspect ratios (W / H) that agree within :data:`MASK_ASPECT_TOLERANCE`."""
  (mh, mw), (ih, iw) = mask_hw, image_hw
  if (mh, mw) == (ih, iw):
    return True
  if min(mh, mw, ih, iw) <= 0:
    return False
  return abs((mw / mh) / (iw / ih) - 1.0) <= MASK_ASPECT_TOLERANCE


def mask_size_line(mask_path: str, mask_hw: tuple[int, int], image_path: str,
                   image_hw: tuple[int, int]) -> str:
  """The one line naming a mask whose size differs from its image's, and what is done."""
  (mh, mw), (ih, iw) = mask_hw, image_hw
  what = (f'mask {mask_path} is {mw}x{mh} for its {iw}x{ih} image {image_path} '
          f'(width x height)')
  if mask_fits(mask_hw, image_hw):
    return f'{what}; same aspect ratio: resized to the image (nearest neighbour)'
  return f'{what}; the aspect ratios differ, so the mask cannot be matched to the image'


def fit_mask(mask: np.ndarray, image_hw: tuple[int, int], mask_path: str,
             image_path: str) -> np.ndarray:
  """``mask`` ({0, 1}, (H, W)) at the image's size: unchanged when the sizes agree,
  resized by nearest neighbour when only the scale differs (:func:`mask_fits`), else a
  UserError naming both files."""
  mask_hw, image_hw = tuple(mask.shape[:2]), tuple(int(v) for v in image_hw)
  if mask_hw == image_hw:
    return mask
  if not mask_fits(mask_hw, image_hw):
    raise UserError(mask_size_line(mask_path, mask_hw, image_path, image_hw))
  resized = Image.fromarray(np.asarray(mask, np.uint8)).resize(
      (image_hw[1], image_hw[0]), Image.Resampling.NEAREST)
  return np.asarray(resized, np.uint8)


def read_mask_for(mask_path: str, image_path: str, image_hw: tuple[int, int]) -> np.ndarray:
  """The mask of an image of ``image_hw`` (H, W), fitted to it by :func:`fit_mask`."""
  return fit_mask(read_mask(mask_path), image_hw, mask_path, image_path)


def non_binary_mask_warning(count: int, total: int) -> str:
  """The one line printed when ``count`` of ``total`` masks hold values other than 0/255."""
  verb = 'holds' if count == 1 else 'hold'
  return (f'{count} of {total} masks {verb} values other than 0 and 255; they are '
          f'binarised at > 127, a 0/1 label image kept as it is (the field\'s reference '
          f'code keeps only pixels equal to 255)')
