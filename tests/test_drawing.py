"""Drawing detections: the threshold, one colour per class, labels inside the image, small
images enlarged; the val images a training run's evaluations write to TensorBoard."""

import glob
import io
import itertools
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pix2seq_jax.inference import drawing


def _grey(height: int, width: int) -> np.ndarray:
  return np.full((height, width, 3), 100, np.uint8)


def _has(picture: Image.Image, colour: tuple[int, int, int]) -> int:
  """How many pixels of `picture` have exactly `colour`."""
  return int(np.all(np.asarray(picture) == colour, axis=-1).sum())


def _det(category_id: int, score: float, bbox=(100, 100, 200, 150)) -> dict:
  return {'category_id': category_id, 'category_name': f'class {category_id}',
          'bbox': list(bbox), 'score': score}


def test_only_detections_at_or_above_the_threshold_are_drawn():
  found = [_det(1, 0.9, (50, 60, 100, 100)), _det(2, 0.3, (250, 60, 100, 100)),
           _det(3, 0.29, (50, 300, 100, 100)), _det(4, 0.0, (250, 300, 100, 100))]
  picture = drawing.draw(_grey(512, 512), found)  # the default threshold: 0.3
  colours = [drawing.colour_of(i) for i in (1, 2, 3, 4)]
  assert [_has(picture, c) > 0 for c in colours] == [True, True, False, False]
  everything = drawing.draw(_grey(512, 512), found, threshold=0.0)
  assert all(_has(everything, c) > 0 for c in colours)
  nothing = drawing.draw(_grey(512, 512), found, threshold=1.0)
  np.testing.assert_array_equal(np.asarray(nothing), _grey(512, 512))
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
      drawing.draw(_grey(8, 8), found, threshold=bad)


def test_each_class_has_its_own_stable_colour():
  colours = [drawing.colour_of(i) for i in range(0, 200)]
  assert len(set(colours)) == len(colours)
  first = np.array(colours[1:len(drawing.PALETTE) + 1], np.float64)
  distance = lambda a, b: np.abs(first[a] - first[b]).sum()
  assert min(distance(a, b) for a, b in itertools.combinations(range(len(first)), 2)) >= 50
  # The first nine, as many as the shapes classes, far apart.
  assert min(distance(a, b) for a, b in itertools.combinations(range(9), 2)) >= 120
  # The same class has the same colour in another image, at another place and score.
  one = drawing.draw(_grey(512, 512), [_det(5, 0.8, (10, 10, 50, 50))])
  two = drawing.draw(_grey(300, 600), [_det(5, 0.4, (300, 100, 80, 40))])
  assert _has(one, drawing.colour_of(5)) > 0 and _has(two, drawing.colour_of(5)) > 0
  assert drawing.colour_of(5) == drawing.PALETTE[4]
  for colour in drawing.PALETTE:  # label text contrasts with its tag
    text = drawing.text_colour(colour)
    assert np.abs(np.subtract(text, colour)).sum() > 200


@pytest.mark.parametrize('bbox', [(0, 0, 100, 50), (450, 0, 62, 40), (460, 470, 52, 42),
                                  (0, 480, 512, 32), (-20, -20, 600, 600), (200, 200, 30, 30)])
def test_labels_stay_inside_the_image(bbox):
  picture = drawing.draw(_grey(512, 512), [_det(7, 0.87, bbox)])
  tag = np.all(np.asarray(picture) == drawing.colour_of(7), axis=-1)
  assert tag.any()
  width, height = picture.size
  size = (150, 20)
  x1, y1, x2, y2 = bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]
  x, y = drawing.label_position((x1, y1, x2, y2), size, (width, height))
  assert 0 <= x <= width - size[0] and 0 <= y <= height - size[1]
  if y1 >= size[1]:
    assert y == y1 - size[1]  # above the box where there is room
  elif 0 <= y1 <= height - size[1]:
    assert y == y1  # inside its top at the image's top edge
  if bbox[:2] == (0, 0):  # the drawn tag: inside the box's top-left corner
    assert tag[2:14, 2:40].mean() > 0.5


def test_labels_avoid_each_other():
  taken = [(100, 80, 250, 100)]
  x, y = drawing.label_position((100, 100, 200, 200), (150, 20), (512, 512), taken)
  assert (x, y) == (100, 100)  # inside the box: the place above is taken


def test_small_images_are_enlarged_and_boxes_follow():
  picture = drawing.draw(_grey(64, 48), [_det(2, 0.9, (8, 8, 16, 16))])
  assert picture.size == (384, 512)
  ys, xs = np.nonzero(np.all(np.asarray(picture) == drawing.colour_of(2), axis=-1))
  assert xs.min() >= 8 * 8 - 2 and xs.max() <= 24 * 8 + 150  # the box and its label
  assert drawing.draw(_grey(600, 800), []).size == (800, 600)  # large: as it was
  assert drawing.draw(_grey(64, 48), [], min_size=0).size == (48, 64)
  line, font = drawing.sizes_for(*picture.size)
  assert line >= 2 and font >= 12
  assert drawing.sizes_for(1280, 960)[1] > font  # the font grows with the image


def test_ground_truth_is_a_dashed_outline_unlike_predictions():
  picture = np.asarray(drawing.draw(_grey(512, 512), [],
                                    ground_truth=[{'bbox': [100, 100, 200, 200]}]))
  edge = picture[100, 100:301]
  assert {tuple(p) for p in edge} >= {(255, 255, 255), (0, 0, 0)}
  assert not any(_has(Image.fromarray(picture), colour) for colour in drawing.PALETTE)


def test_as_batch_pads_to_one_size():
  batch = drawing.as_batch([Image.new('RGB', (30, 20), (9, 9, 9)), np.ones((25, 10, 3), np.uint8)])
  assert batch.shape == (2, 25, 30, 3) and batch.dtype == np.uint8
  assert batch[0, :20, :30].min() == 9 and batch[0, 20:].max() == 0
  assert batch[1, :25, :10].min() == 1 and batch[1, :, 10:].max() == 0


def event_images(workdir: str, tag: str) -> dict[int, list[Image.Image]]:
  """{step: images} of the image summaries under `tag` in the workdir's event files."""
  from tensorboard.backend.event_processing import event_accumulator
  found = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    events = event_accumulator.EventAccumulator(path, size_guidance={
        event_accumulator.TENSORS: 0})
    events.Reload()
    if tag not in events.Tags()['tensors']:
      continue
    for event in events.Tensors(tag):
      encoded = event.tensor_proto.string_val[2:]  # after the width and height
      found[event.step] = [Image.open(io.BytesIO(png)) for png in encoded]
  return found


def test_training_evaluations_write_drawn_val_images_to_tensorboard(tiny_workdir):
  """tiny_workdir: 2 steps evaluated at the end on 4 val images, the default
  eval.num_images_drawn = 4 of them drawn."""
  from pix2seq_jax.config import default
  written = event_images(tiny_workdir, 'eval/detections')
  count = default.get_config().eval.num_images_drawn
  assert list(written) == [2] and len(written[2]) == count == 4
  for picture in written[2]:
    assert max(picture.size) >= drawing.MIN_SIZE and picture.mode == 'RGB'
    pixels = np.asarray(picture)
    # The ground truth's dashes: each shapes val image has at least one object.
    assert _has(picture, (255, 255, 255)) and pixels.std() > 0


def test_masks_are_filled_translucent_and_outlined_in_the_class_colour():
  mask = np.zeros((512, 512), bool)
  mask[100:300, 150:350] = True
  rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle = {'size': rle['size'], 'counts': rle['counts'].decode('ascii')}  # as JSON holds it
  colour = drawing.colour_of(3)
  for det in (dict(_det(3, 0.9, (150, 100, 200, 200)), mask=mask),
              dict(_det(3, 0.9, (150, 100, 200, 200)), segmentation=rle)):
    picture = np.asarray(drawing.draw(_grey(512, 512), [det], threshold=0.5))
    inside = picture[200, 250]  # grey 100 mixed with the colour
    expected = np.round(100 + drawing.MASK_OPACITY * (np.asarray(colour) - 100))
    np.testing.assert_allclose(inside, expected, atol=2)
    assert tuple(picture[200, 150]) == colour  # the outline
    np.testing.assert_array_equal(picture[50:90, 400:], 100)  # outside: untouched
  hidden = dict(_det(3, 0.2, (150, 100, 200, 200)), mask=mask)
  np.testing.assert_array_equal(drawing.draw(_grey(512, 512), [hidden]), _grey(512, 512))


def test_keypoints_are_points_joined_by_the_skeleton():
  points = np.zeros((17, 3))
  points[0] = (100, 100, 2)  # nose
  points[1] = (300, 100, 1)  # left eye; pair (1, 2) of COCO's skeleton
  points[2] = (300, 400, 0)  # not labelled: not drawn
  det = dict(_det(1, 0.9, (90, 90, 220, 320)), keypoints=points.reshape(-1).tolist())
  colour = drawing.colour_of(1)
  picture = np.asarray(drawing.draw(_grey(512, 512), [det]))
  assert tuple(picture[100, 200]) == colour  # on the nose-eye line
  assert tuple(picture[400, 300]) == (100, 100, 100)
  unjoined = np.asarray(drawing.draw(_grey(512, 512), [det], skeletons={1: [(2, 3)]}))
  assert tuple(unjoined[100, 200]) == (100, 100, 100)  # this skeleton has no nose-eye pair
  assert tuple(unjoined[100, 100]) == colour  # the points still are
