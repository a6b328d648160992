"""Data attacks: flipped labels, the backdoor's trigger and poisoning, and its success rate."""

from __future__ import annotations

import numpy as np
import torch

from qflare.attacks import add_trigger, attack_success_rate, flip_labels, parse_attack, poison_data
from qflare.attacks.data import triggered_test_set
from qflare.ml import init_weights

torch.set_num_threads(1)


def test_label_flip_maps_y_to_nine_minus_y() -> None:
    assert flip_labels(np.arange(10)).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    images = np.zeros((3, 28, 28), np.uint8)
    x, y = poison_data(parse_attack("label_flip"), images, np.array([0, 4, 9]), np.random.default_rng(0))
    assert x is images and y.tolist() == [9, 5, 0]


def test_the_trigger_is_a_white_square_in_the_bottom_right_corner() -> None:
    images = np.zeros((2, 6, 6), np.uint8)
    out = add_trigger(images, size=2)
    assert images.sum() == 0  # a copy
    assert out[0, 4:, 4:].tolist() == [[255, 255], [255, 255]]
    assert int(out[0].sum()) == 4 * 255 and int(out[1].sum()) == 4 * 255


def test_backdoor_poisons_its_fraction_of_the_examples() -> None:
    images = np.zeros((10, 28, 28), np.uint8)
    labels = np.arange(10) % 3 + 1
    attack = parse_attack("backdoor", {"fraction": 0.3, "target": 0, "size": 3})
    x, y = poison_data(attack, images, labels, np.random.default_rng(2))
    hit = np.flatnonzero(y == 0)
    assert len(hit) == 3
    assert all(x[i, -3:, -3:].min() == 255 for i in hit)
    untouched = np.setdiff1d(np.arange(10), hit)
    assert x[untouched].sum() == 0 and (y[untouched] == labels[untouched]).all()
    x2, y2 = poison_data(attack, images, labels, np.random.default_rng(2))
    assert (x2 == x).all() and (y2 == y).all()


def test_the_success_rate_counts_triggered_images_of_other_classes_taken_for_the_target() -> None:
    images = np.zeros((6, 28, 28), np.uint8)
    labels = np.array([0, 1, 2, 3, 0, 5])
    assert len(triggered_test_set(images, labels, target=0, size=4)) == 4
    # A 2nn whose output layer always says class 7: every triggered non-7 image is a success for 7.
    w = [np.zeros_like(a) for a in init_weights("2nn", 0)]
    w[-1][7] = 1.0
    assert attack_success_rate("2nn", w, images, labels, target=7, size=4) == 1.0
    assert attack_success_rate("2nn", w, images, labels, target=0, size=4) == 0.0
    only_target = np.zeros(3, np.int64) + 7
    assert attack_success_rate("2nn", w, images[:3], only_target, target=7, size=4) == 0.0
