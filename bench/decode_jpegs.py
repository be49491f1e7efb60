"""Time Tiny-ImageNet's JPEG conversion: normbench's all-core decoder vs a one-process loop.

Writes N synthetic 64 x 64 JPEGs to a temporary folder, decodes them both ways in the same run,
and prints images/s and the ratio. Usage: python bench/decode_jpegs.py [N]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from normbench.sources import _read_all, _read_rgb  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        base = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)  # smooth, photo-like content
        for i in range(n):
            path = f"{tmp}/{i}.JPEG"
            Image.fromarray(base[i]).resize((64, 64), Image.BILINEAR).save(path, quality=90)
            paths.append(path)
        t0 = time.perf_counter()
        ours = _read_all(paths, "normbench")
        t1 = time.perf_counter()
        ref = np.stack([_read_rgb(p) for p in paths])
        t2 = time.perf_counter()
    assert np.array_equal(ours, ref)
    ours_rate, ref_rate = n / (t1 - t0), n / (t2 - t1)
    print(f"{n} JPEGs: normbench {ours_rate:.0f} img/s, one-process loop {ref_rate:.0f} img/s, "
          f"ratio {ours_rate / ref_rate:.2f}x; 110,000 Tiny-ImageNet images at this rate: "
          f"{110_000 / ours_rate:.0f} s")


if __name__ == "__main__":
    main()
