"""Train a small MLP on the spirals training split. EDITABLE: this is the file to improve.

`python train.py` trains, saves the parameters to model.npz and prints
`train_loss: <float>` and `training_seconds: <float>`. evaluate.py imports
`load_model` from this file (without training) to score model.npz on held-out
data, so whatever you change, keep `load_model(path)` returning a function that
maps inputs of shape (n, INPUT_DIM) to logits of shape (n, NUM_CLASSES).
"""

import os

# One BLAS thread per trial, so two trials can share a 2-core machine.
# These must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import itertools
import math
import time

import numpy as np
from prepare import INPUT_DIM, NUM_CLASSES, load_train

# ---- hyperparameters: one assignment each, at column 0 (overnight rewrites these lines) ----
LEARNING_RATE = 0.001  # peak Adam step size; decays to zero on a cosine schedule
HIDDEN_SIZE = 64  # units in each hidden layer
NUM_LAYERS = 2  # number of hidden layers
ACTIVATION = "relu"  # "relu" or "tanh"
WEIGHT_DECAY = 0.01  # decoupled (AdamW) decay: each step scales weights by (1 - lr * WEIGHT_DECAY)
BATCH_SIZE = 32  # examples per optimiser step
EPOCHS = 360  # passes over the training split (training time grows with this)
SEED = 0  # initialisation and shuffling; fixed so a run is reproducible


def _activate(z: np.ndarray) -> np.ndarray:
    if ACTIVATION == "tanh":
        return np.tanh(z)
    if ACTIVATION == "relu":
        return np.maximum(z, 0.0)
    raise ValueError(f"unknown ACTIVATION {ACTIVATION!r}; use 'relu' or 'tanh'")


def _activate_grad(h: np.ndarray) -> np.ndarray:
    """Derivative of the activation, written in terms of its output h."""
    if ACTIVATION == "tanh":
        return 1.0 - h * h
    return (h > 0.0).astype(h.dtype)


def forward(params: dict, X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits for X, plus the input of every layer (kept for backprop)."""
    h = (X - params["mean"]) / params["std"]
    inputs = [h]
    for i in range(NUM_LAYERS):
        h = _activate(h @ params[f"W{i}"] + params[f"b{i}"])
        inputs.append(h)
    logits = h @ params[f"W{NUM_LAYERS}"] + params[f"b{NUM_LAYERS}"]
    return logits, inputs


def load_model(path: str):
    """Return predict(X) -> logits for the parameters saved at path."""
    with np.load(path) as saved:
        params = {k: saved[k] for k in saved.files}
    return lambda X: forward(params, np.asarray(X, dtype=np.float32))[0]


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits."""
    rows = np.arange(len(y))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[rows, y] + 1e-12).mean())
    p[rows, y] -= 1.0
    return loss, p / len(y)


def _layout() -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every trainable array, in storage order."""
    sizes = [INPUT_DIM] + [HIDDEN_SIZE] * NUM_LAYERS + [NUM_CLASSES]
    layout = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layout += [(f"W{i}", (fan_in, fan_out)), (f"b{i}", (fan_out,))]
    return layout


def _views(flat: np.ndarray) -> dict:
    """Name the layers' weights and biases as views into one flat vector.

    Parameters, gradients and Adam's moments all share this layout, so the
    optimiser update is a handful of whole-vector operations per step.
    """
    views, offset = {}, 0
    for name, shape in _layout():
        size = math.prod(shape)
        views[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return views


def train() -> None:
    t0 = time.time()
    X, y = load_train()
    rng = np.random.default_rng(SEED)

    flat = np.zeros(sum(math.prod(shape) for _, shape in _layout()), dtype=np.float32)
    params = _views(flat)
    gain = 2.0 if ACTIVATION == "relu" else 1.0  # He init for relu, Xavier-like for tanh
    for name, w in params.items():
        if name.startswith("W"):
            w[...] = rng.normal(0.0, math.sqrt(gain / w.shape[0]), w.shape)
    # Input standardisation is part of the model, so evaluate.py applies it too.
    params["mean"] = X.mean(axis=0)
    params["std"] = X.std(axis=0) + 1e-6

    grad_flat = np.zeros_like(flat)
    grads = _views(grad_flat)
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    steps_per_epoch = max(1, len(X) // BATCH_SIZE)
    total_steps = EPOCHS * steps_per_epoch
    step = 0
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(X))
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            logits, inputs = forward(params, X[idx])
            loss, g = cross_entropy(logits, y[idx])
            epoch_loss += loss

            # Backprop, writing each gradient straight into grad_flat.
            for i in range(NUM_LAYERS, -1, -1):
                np.matmul(inputs[i].T, g, out=grads[f"W{i}"])
                g.sum(axis=0, out=grads[f"b{i}"])
                if i > 0:
                    g = (g @ params[f"W{i}"].T) * _activate_grad(inputs[i])

            # AdamW step with a cosine learning-rate decay to zero.
            step += 1
            lr = LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            m *= beta1
            m += (1.0 - beta1) * grad_flat
            v *= beta2
            v += (1.0 - beta2) * grad_flat * grad_flat
            for name, w in params.items():
                if name.startswith("W"):  # decay weights only, not biases
                    w *= 1.0 - lr * WEIGHT_DECAY
            m_hat = m / (1.0 - beta1**step)
            v_hat = v / (1.0 - beta2**step)
            flat -= lr * m_hat / (np.sqrt(v_hat) + eps)
            if step % 100 == 0:
                # Flush near-zero optimiser state (e.g. of dead relu units) to exact
                # zero: arithmetic on subnormal floats is so slow on CPUs that
                # without this some settings train twice as slowly.
                m[np.abs(m) < 1e-30] = 0.0
                v[v < 1e-30] = 0.0
        if epoch == 1 or epoch % max(1, EPOCHS // 10) == 0:
            print(f"epoch {epoch:3d}/{EPOCHS}  loss {epoch_loss / steps_per_epoch:.4f}", flush=True)

    train_loss, _ = cross_entropy(forward(params, X)[0], y)
    np.savez("model.npz", **params)
    print(f"train_loss: {train_loss:.6f}")
    print(f"training_seconds: {time.time() - t0:.2f}")


if __name__ == "__main__":
    train()
