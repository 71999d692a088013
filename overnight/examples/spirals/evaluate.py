"""Score model.npz on held-out data. PROTECTED: agents must not edit this file.

Prints exactly one line, `val_loss: <float>`: the mean cross-entropy (natural
log) of the model's predictions on VAL_SIZE points drawn with VAL_SEED. That
seed exists only in this file, so the training script never sees these points.
Lower is better. Exits non-zero, with a message on stderr, if model.npz is
missing, the predictions have the wrong shape, or the loss is not finite.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import sys
import traceback
from typing import NoReturn

import numpy as np
from prepare import NUM_CLASSES, TRAIN_SEED, make_split

VAL_SEED = 2024  # never used by prepare.load_train, so these points are unseen
VAL_SIZE = 20000  # val_loss estimates the expected loss to +-0.006 (one std. error)
MODEL_PATH = "model.npz"


def fail(message: str) -> NoReturn:
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    assert VAL_SEED != TRAIN_SEED
    if not os.path.exists(MODEL_PATH):
        fail(f"{MODEL_PATH} not found in {os.getcwd()}; did `python train.py` finish?")
    X, y = make_split(VAL_SIZE, VAL_SEED)
    try:
        from train import load_model  # defines things only; training runs under __main__

        logits = np.asarray(load_model(MODEL_PATH)(X), dtype=np.float64)
    except Exception as error:
        traceback.print_exc()
        fail(f"could not score {MODEL_PATH} with train.load_model: {error!r}")
    if logits.shape != (len(y), NUM_CLASSES):
        fail(f"model returned logits of shape {logits.shape}, expected {(len(y), NUM_CLASSES)}")
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    val_loss = float(-log_probs[np.arange(len(y)), y].mean())
    if not np.isfinite(val_loss):
        fail(f"val_loss is {val_loss} (the model produced NaN or infinite logits)")
    print(f"val_loss: {val_loss:.6f}")


if __name__ == "__main__":
    main()
