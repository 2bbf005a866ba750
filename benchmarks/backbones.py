"""Training throughput (images/s) of every registered backbone on this machine.

For each backbone (random init, ``--image-size`` px, batch ``--batch-size``), builds the
classifier, runs ``--warmup`` training steps (graph tracing), then times ``--steps`` steps of
``model.train_on_batch`` on random uint8 images. Last line: ``ratio: X`` = small_cnn's
images/s over the slowest backbone's.

    python benchmarks/backbones.py                  # 96 px, batch 32, 5 timed steps
    python benchmarks/backbones.py --quick          # 2 backbones, 1 step (CI)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import REPO  # noqa: F401  (puts the repository on sys.path)


def throughput(name: str, size: int, batch: int, warmup: int, steps: int) -> float:
    import keras

    from leukemia.models import create_backbone

    keras.backend.clear_session()
    model = create_backbone(name, image_size=size, weights="none", dropout=0.2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8).astype("float32")
    y = rng.integers(0, 2, (batch, 1)).astype("float32")
    for _ in range(warmup):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small_cnn and mobilenet_v3_small, 1 step")
    args = p.parse_args()

    from leukemia.models import list_backbones

    names = ["small_cnn", "mobilenet_v3_small"] if args.quick else list_backbones()
    steps = 1 if args.quick else args.steps
    rates = {}
    for name in names:
        rates[name] = throughput(name, args.image_size, args.batch_size, args.warmup, steps)
        print(f"{name:>20}: {rates[name]:8.1f} images/s (training, {args.image_size} px, "
              f"batch {args.batch_size})", flush=True)
    print(f"ratio: {rates['small_cnn'] / min(rates.values()):.2f}")


if __name__ == "__main__":
    main()
