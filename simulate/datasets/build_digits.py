"""Write ``digits.npz``, the copy of scikit-learn's digits that ships with ``simulate``.

The file holds scikit-learn's ``load_digits()`` unchanged: ``images`` (1797, 8, 8) uint8
pixel values 0..16 (the UCI optical-recognition data, 32x32 bitmaps counted in 4x4 blocks)
and ``target`` (1797,) uint8 classes 0..9, in scikit-learn's order. Nothing else is stored,
so ``simulate.digits`` never needs scikit-learn (or a download) at run time.
``tests/test_digits.py`` compares the shipped file with ``load_digits()`` whenever
scikit-learn is installed.

Usage (from the repository root, with scikit-learn installed)::

    python simulate/datasets/build_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits as the arrays stored in the file."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images)
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise ValueError("load_digits() no longer returns integer pixel values in [0, 16]")
    return {"images": images.astype(np.uint8), "target": np.asarray(d.target).astype(np.uint8)}


def main(path: Path | None = None) -> None:
    path = Path(__file__).with_name("digits.npz") if path is None else path
    np.savez_compressed(path, **digits_arrays())
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
