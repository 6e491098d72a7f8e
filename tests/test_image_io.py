"""limijax.image_io: the one reader of images and masks (8-bit, 16-bit, float, masks)."""

import numpy as np
from PIL import Image
import pytest

from limijax import image_io
from limijax.errors import UserError


def save(path, array):
  Image.fromarray(array).save(path)
  return str(path)


def test_8bit_grey_and_colour(tmp_path):
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  np.testing.assert_array_equal(image_io.read_image(save(tmp_path / 'g.png', grey)), grey)
  rgb = np.zeros((1, 3, 3), np.uint8)
  rgb[0, 0] = (100, 100, 100)  # grey stored as RGB: kept exactly
  rgb[0, 1] = (255, 0, 0)  # 299 * 255 / 1000 = 76.2 -> 76
  rgb[0, 2] = (0, 0, 255)  # 114 * 255 / 1000 = 29.07 -> 29
  out = image_io.read_image(save(tmp_path / 'c.png', rgb))
  assert out.dtype == np.uint8 and out.shape == (1, 3)
  np.testing.assert_array_equal(out, [[100, 76, 29]])


def test_16bit_frame_is_stretched_not_clipped(tmp_path):
  # lo = 1000, hi = 3000: out = floor((v - 1000) * 255 / 2000 + 0.5)
  #   1000 -> 0; 1100 -> 12.75 -> 13; 2000 -> 127.5 -> 128;
  #   1255 -> 32.5125 -> 33; 2999 -> 254.87 -> 255; 3000 -> 255.
  frame = np.array([[1000, 1100, 2000], [1255, 2999, 3000]], np.uint16)
  path = save(tmp_path / 'ir16.png', frame)
  with Image.open(path) as im:
    assert im.mode.startswith('I;16')
    clipped = np.asarray(im.convert('L'))
  assert (clipped == 255).all()  # what PIL alone would have done
  out = image_io.read_image(path)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, [[0, 13, 128], [33, 255, 255]])
  # The full 16-bit range maps 0 -> 0 and 65535 -> 255; 32767 -> 127.498 -> 127.
  full = np.array([[0, 32767, 65535]], np.uint16)
  np.testing.assert_array_equal(image_io.read_image(save(tmp_path / 'full.png', full)),
                                [[0, 127, 255]])
  # A constant frame has no range: all 0.
  flat = np.full((2, 2), 4000, np.uint16)
  np.testing.assert_array_equal(image_io.read_image(save(tmp_path / 'flat.png', flat)), 0)
  # Mode I (32-bit integers) follows the same rule: -5 -> 0, 0 -> 127.5 -> 128, 5 -> 255.
  wide = Image.fromarray(np.array([[-5, 0, 5]], np.int32))
  assert wide.mode == 'I'
  np.testing.assert_array_equal(image_io.to_grey(wide, 'w.png'), [[0, 128, 255]])


def test_16bit_refused_where_scaling_would_be_wrong(tmp_path):
  path = save(tmp_path / 'pred16.png', np.array([[0, 65535]], np.uint16))
  with pytest.raises(UserError, match=r'pred16\.png: prediction has 16/32-bit pixels'):
    image_io.read_image(path, 'prediction', stretch_16bit=False)
  with pytest.raises(UserError, match=r'pred16\.png: prediction has 16/32-bit pixels'):
    image_io.image_size(path, 'prediction', stretch_16bit=False)  # from the header already
  assert image_io.image_size(path) == (2, 1)


def test_float_image_in_unit_range_scaled_else_refused(tmp_path):
  # floor(v * 255 + 0.5): 0 -> 0, 0.25 -> 64.25 -> 64, 0.5 -> 128, 1 -> 255.
  unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
  path = save(tmp_path / 'unit.tif', unit)
  with Image.open(path) as im:
    assert im.mode == 'F'
  np.testing.assert_array_equal(image_io.read_image(path), [[0, 64, 128, 255]])
  outside = save(tmp_path / 'radiance.tif', np.array([[0.0, 1.5]], np.float32))
  with pytest.raises(UserError, match=r'radiance\.tif: image has float pixels \(mode F\)'):
    image_io.read_image(outside)
  nan = save(tmp_path / 'nan.tif', np.array([[0.0, np.nan]], np.float32))
  with pytest.raises(UserError, match=r'nan\.tif'):
    image_io.read_image(nan)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not a png')
  with pytest.raises(UserError, match=r'bad\.png: cannot read image'):
    image_io.read_image(str(bad))
  with pytest.raises(UserError, match=r'gone\.png: no such mask file'):
    image_io.read_mask(str(tmp_path / 'gone.png'))
  with pytest.raises(UserError, match=r'bad\.png: cannot read prediction'):
    image_io.image_size(str(bad), 'prediction')


def test_masks_binarised_labels_kept_grey_refused(tmp_path):
  clean = np.zeros((8, 8), np.uint8)
  clean[2:4, 2:4] = 255
  mask, other = image_io.read_mask_info(save(tmp_path / 'clean.png', clean))
  np.testing.assert_array_equal(mask, clean // 255)
  assert mask.dtype == np.uint8 and not other
  soft = clean.copy()
  soft[1, 2], soft[4, 2] = 200, 60  # anti-aliased edge: 200 is target, 60 is not
  mask, other = image_io.read_mask_info(save(tmp_path / 'soft.png', soft))
  assert other and mask.sum() == 5 and mask[1, 2] == 1 and mask[4, 2] == 0
  labels = clean // 255  # a 0/1 label image: kept, not emptied by > 127
  mask, other = image_io.read_mask_info(save(tmp_path / 'labels.png', labels))
  assert other
  np.testing.assert_array_equal(mask, labels)
  empty, other = image_io.read_mask_info(save(tmp_path / 'empty.png', np.zeros((4, 4), np.uint8)))
  assert not other and empty.sum() == 0
  # A 16-bit 0/65535 mask: stretched to 0/255, then binarised.
  wide, other = image_io.read_mask_info(save(tmp_path / 'wide.png', clean.astype(np.uint16) * 257))
  np.testing.assert_array_equal(wide, clean // 255)
  assert not other
  grey = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
  with pytest.raises(UserError, match=r'grey\.png: not a binary mask'):
    image_io.read_mask(save(tmp_path / 'grey.png', grey))


def test_non_binary_mask_warning_line():
  assert image_io.non_binary_mask_warning(12, 427).startswith(
      '12 of 427 masks hold values other than 0 and 255; they are binarised at > 127')
  assert 'keeps only pixels equal to 255' in image_io.non_binary_mask_warning(1, 2)
  assert image_io.non_binary_mask_warning(1, 2).startswith('1 of 2 masks holds')
