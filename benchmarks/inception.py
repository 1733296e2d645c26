"""Inception features per runtime: images/s and agreement with PyTorch's features (and FID).

    python -m benchmarks.inception [--threads 2] [--repeats 5] [--batches 2] [--fid-n 10000 --data fashion_mnist]

Times `lgm.evaluate.features.inception_protocol` under each installed runtime (``torch``, and
``openvino`` when ``pip install 'lgm-flow[inception]'`` brought it) on random 8-bit 1x28x28 images, as
the protocol is used: batches of 50 (the resize to 299x299 included). Prints a markdown table of
images/s (median of ``--repeats`` timings of ``--batches`` batches, the runtimes measured in turns),
the ratio to torch, and the largest feature difference relative to the largest torch feature.

With ``--fid-n N`` it also computes FID between ``N`` training and ``N`` test images of ``--data``
under each runtime (the data must be on disk: ``--data-dir`` or ``$LGM_DATA_DIR``) and prints the
difference: the protocol's promise is that the runtime does not move FID.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import machine_line, markdown_table, ratio
from lgm.evaluate.features import extract_features, inception_protocol, installed_inception_runtimes, real_images
from lgm.evaluate.metrics import fid

BATCH = 50


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch (and OpenVINO) threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per runtime; the median is reported")
    p.add_argument("--batches", type=int, default=2, help="batches of 50 images per timing (default 2)")
    p.add_argument("--fid-n", type=int, default=0, help="also compare FID on N train vs N test images (default: no)")
    p.add_argument("--data", default="fashion_mnist", help="data set of the FID comparison")
    p.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runtimes = installed_inception_runtimes()
    protocols = {name: inception_protocol(name) for name in runtimes}

    images = torch.randint(0, 256, (args.batches * BATCH, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    features = {name: extract_features(pr, images, progress=False) for name, pr in protocols.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.repeats):
        for name, protocol in protocols.items():
            start = time.perf_counter()
            extract_features(protocol, images, progress=False)
            seconds[name].append(time.perf_counter() - start)
    rates = {name: len(images) / statistics.median(s) for name, s in seconds.items()}
    scale = features["torch"].abs().max()
    rows = [
        [
            name,
            f"{rates[name]:.1f}",
            ratio(rates[name], rates["torch"]),
            f"{(f - features['torch']).abs().max() / scale:.1e}",
        ]
        for name, f in features.items()
    ]
    print(
        f"Inception features of 1x28x28 images in batches of {BATCH}, {machine_line(with_normflows=False)}; "
        f"median of {args.repeats} x {len(images)} images\n"
    )
    print(markdown_table(["runtime", "img/s", "vs torch", "max feature difference (relative to torch)"], rows))
    if "openvino" not in runtimes:
        print("\nopenvino is not installed: pip install 'lgm-flow[inception]'")
    if args.fid_n:
        real = real_images(args.data, "train", args.fid_n, args.data_dir)
        test = real_images(args.data, "test", args.fid_n, args.data_dir)
        values = {
            name: fid(extract_features(pr, real, "train"), extract_features(pr, test, "test"))
            for name, pr in protocols.items()
        }
        print(f"\nFID, {args.fid_n:,} {args.data} training images against {args.fid_n:,} test images:\n")
        print(
            markdown_table(
                ["runtime", "FID", "minus torch"],
                [[name, f"{v:.4f}", f"{v - values['torch']:+.1e}"] for name, v in values.items()],
            )
        )


def _relative_difference(features: torch.Tensor, reference: torch.Tensor) -> float:
    return ((features - reference).abs().max() / reference.abs().max()).item()


if __name__ == "__main__":
    main()
