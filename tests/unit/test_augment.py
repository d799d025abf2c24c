"""task.augment: affine (Koch et al. 2015's distortions of training images) and task.test_rotations:
the distortion's geometry against shifts written out with numpy, the draw's place in the task stream
(only training images; the query set stays whatever K is; a task is the same in any batch), and
rotations of the test classes switched off (Lake et al.'s within-alphabet protocol)."""
import numpy as np
import pytest
import torch

from tasks.images import ArrayImages, FewShotImages, ImageSet, affine_distort
from tasks.sampling import sample_batch


def shifted(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """out[..., i, j] = x[..., i + dy, j + dx], zero outside: the image moved left by dx, up by dy."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        x[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def uniforms(*, shift_x=0.0, shift_y=0.0, scale=1.0) -> np.ndarray:
    """The 7 uniforms of affine_distort giving no rotation or shear, these shifts (pixels) and scale."""
    return np.array([0.5, 0.5, 0.5, (scale - 0.8) / 0.4, (scale - 0.8) / 0.4, (shift_x / 2 + 1) / 2,
                     (shift_y / 2 + 1) / 2])


def test_the_identity_map_keeps_the_image_and_whole_pixel_shifts_move_it():
    x = np.random.default_rng(0).random((2, 3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(affine_distort(x, np.tile(uniforms(), (2, 3, 1))), x, atol=1e-5)
    for dx, dy in ((2, 0), (-2, 0), (0, 2), (1, -1), (-2, 2)):
        got = affine_distort(x, np.tile(uniforms(shift_x=dx, shift_y=dy), (2, 3, 1)))
        np.testing.assert_allclose(got, shifted(x, dx, dy), atol=1e-5)


def test_each_image_gets_its_own_map_and_the_ranges_are_kochs():
    x = np.zeros((1, 2, 1, 28, 28), np.float32)
    x[..., 14, 14] = 1.0  # one bright pixel at the centre
    u = np.stack([uniforms(shift_x=2), uniforms(shift_y=-2)])[None]
    got = affine_distort(x, u)
    assert np.unravel_index(got[0, 0, 0].argmax(), (28, 28)) == (14, 12)  # moved left by 2
    assert np.unravel_index(got[0, 1, 0].argmax(), (28, 28)) == (16, 14)  # moved down by 2
    # scale 1.2 samples a wider input region (the map is output -> input): a 3x3 square shrinks
    sq = np.zeros((1, 1, 1, 28, 28), np.float32)
    sq[..., 12:17, 12:17] = 1.0
    assert affine_distort(sq, uniforms(scale=1.2)[None, None]).sum() < sq.sum() * 0.8
    # the map (output -> input) has determinant (1 - shear_x * shear_y) * scale_x * scale_y, within
    # [0.91 * 0.8^2, 1.09 * 1.2^2] for Koch's ranges: a shape well inside the image keeps its mass
    # divided by it (up to bilinear edges)
    blob = np.zeros((1, 64, 1, 28, 28), np.float32)
    blob[..., 10:18, 10:18] = 1.0
    mass = affine_distort(blob, np.random.default_rng(1).random((1, 64, 7))).sum(axis=(2, 3, 4)) / 64.0
    assert ((mass > 1 / (1.09 * 1.44) - 0.05) & (mass < 1 / (0.91 * 0.64) + 0.05)).all(), mass
    assert mass.std() > 0.05  # the draws differ


def character_images(classes=6, per_class=5):
    """Each class's images share a distinct random pattern (so rotations and distortions show)."""
    rng = np.random.default_rng(2)
    images, names = [], []
    for c in range(classes):
        pattern = (rng.random((12, 12, 1)) > 0.6).astype(np.uint8) * 255
        for _ in range(per_class):
            images.append(pattern)
            names.append(f"A/c{c}")
    return ImageSet(ArrayImages(np.stack(images)), np.array(names), np.array(["A"] * len(names)), (12, 12, 1))


def draw(dist, split="train", indices=range(4), shots=1, **kw):
    return sample_batch(dist, seed=3, split=split, iteration=5, indices=indices, shots=shots, query=2, **kw)


def test_affine_distorts_only_training_images_and_keeps_each_task_whatever_the_batch_and_k():
    images = character_images()
    names = sorted(set(images.classes.tolist()))
    plain = FewShotImages(images, {"train": names, "test": names}, ways=3, rotations=True)
    aug = FewShotImages(images, {"train": names, "test": names}, ways=3, rotations=True, augment="affine")
    a, p = draw(aug), draw(plain)
    for key in ("y_support", "y_query"):
        assert np.array_equal(a[key], p[key])  # the same classes and labels: the draw comes after them
    assert not np.allclose(a["x_support"], p["x_support"])  # distorted
    assert abs(float(a["x_query"].sum()) / float(p["x_query"].sum()) - 1) < 0.5  # the same characters
    for key in ("x_support", "x_query"):  # test images are never distorted
        assert np.array_equal(draw(aug, "test")[key], draw(plain, "test")[key])
    assert np.array_equal(draw(aug, indices=[2])["x_support"][0], a["x_support"][2])  # one task, any batch
    assert np.array_equal(draw(aug, shots=3)["x_query"], a["x_query"])  # the query set stays whatever K is


def test_test_rotations_off_tests_the_characters_as_drawn():
    images = character_images()
    names = sorted(set(images.classes.tolist()))
    dist = FewShotImages(images, {"train": names[:3], "test": names[3:]}, ways=3, rotations=True,
                         test_rotations=False)
    assert len(dist.splits["train"]) == 12 and {k for _, k in dist.splits["train"]} == {0, 1, 2, 3}
    assert dist.splits["test"] == [(n, 0) for n in names[3:]]
    both = FewShotImages(images, {"train": names[:3], "test": names[3:]}, ways=3, rotations=True)
    assert len(both.splits["test"]) == 12  # the default: MAML's protocol rotates test classes too


@pytest.mark.parametrize("sample_on_device", [False, True])
def test_affine_draws_on_the_device_as_on_the_cpu(sample_on_device):
    images = character_images()
    names = sorted(set(images.classes.tolist()))
    dist = FewShotImages(images, {"train": names, "test": names}, ways=3, rotations=True, augment="affine")
    cpu = draw(dist)
    got = draw(dist, device="cpu", on_device=True) if sample_on_device else draw(dist)
    for key in ("x_support", "x_query"):
        torch.testing.assert_close(torch.as_tensor(got[key]), torch.as_tensor(cpu[key]), rtol=0, atol=1e-6)
