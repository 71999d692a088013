"""Fixed data for the spirals lab. PROTECTED: agents must not edit this file.

The task: classify points on NUM_CLASSES interleaved spiral arms. The spiral
lives in a 2-D plane hidden inside INPUT_DIM dimensions: the two spiral
coordinates are padded with distractor dimensions of pure noise, then the whole
vector is rotated by a fixed random orthogonal matrix and rescaled per
dimension, so no single input column carries the signal and raw scales differ.
A fraction of the labels is flipped at random, so the best achievable loss is
above zero and a model that memorises the training set pays for it on held-out
data.

This module only knows how to *generate* data. It hands the training script the
training split and nothing else; the held-out split is drawn by evaluate.py from
a seed that exists only there.
"""

import numpy as np

NUM_CLASSES = 4  # spiral arms = classes
INPUT_DIM = 10  # 2 spiral coordinates + 8 distractor dimensions, then mixed
NUM_TRAIN = 10000  # size of the training split
TURNS = 1.6  # how many times each arm winds around the centre
SPIRAL_NOISE = 0.04  # jitter of points around their arm (in spiral units)
DISTRACTOR_STD = 0.5  # spread of the pure-noise dimensions
LABEL_NOISE = 0.05  # fraction of labels replaced by a uniformly random class

TASK_SEED = 1234  # fixes the embedding (rotation and scales): the same task everywhere
TRAIN_SEED = 0  # fixes which points are in the training split


def _embedding() -> tuple[np.ndarray, np.ndarray]:
    """The fixed rotation and per-dimension scales shared by every split."""
    rng = np.random.default_rng(TASK_SEED)
    q, r = np.linalg.qr(rng.standard_normal((INPUT_DIM, INPUT_DIM)))
    q *= np.sign(np.diag(r))  # make the QR rotation unique, hence reproducible
    scales = np.exp(rng.uniform(np.log(0.2), np.log(5.0), INPUT_DIM))
    return q, scales


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw n labelled points: X float32 (n, INPUT_DIM), y int64 (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    t = np.sqrt(rng.uniform(0.0, 1.0, n))  # sqrt: uniform density over the disc
    angle = t * TURNS * 2 * np.pi + y * (2 * np.pi / NUM_CLASSES)
    plane = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    plane += SPIRAL_NOISE * rng.standard_normal((n, 2))
    distractors = DISTRACTOR_STD * rng.standard_normal((n, INPUT_DIM - 2))
    rotation, scales = _embedding()
    X = np.concatenate([plane, distractors], axis=1) @ rotation.T * scales
    flip = rng.uniform(size=n) < LABEL_NOISE
    y = np.where(flip, rng.integers(0, NUM_CLASSES, n), y)
    return X.astype(np.float32), y.astype(np.int64)


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """The training split: the only data the training script may use."""
    return make_split(NUM_TRAIN, TRAIN_SEED)
