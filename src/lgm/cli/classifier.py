"""``lgm-flow classifier fit|test``: train a protocol classifier, or measure one's test accuracy.

``lgm-flow classifier fit --data fashion_mnist --epochs 12 --hflip --out fashion_mnist_classifier.pt``
trains on the official training set and prints the test accuracy and the file's SHA-256.
``lgm-flow classifier test --data mnist`` tests the shipped classifier (or ``--weights PATH``).
"""

from __future__ import annotations

import argparse
import json

from lgm.data.images import load_images
from lgm.evaluate.classifier import classifier_for, load_classifier, save_classifier
from lgm.evaluate.classifier_fit import accuracy, fit_classifier
from lgm.utils.files import check_writable


def classifier_main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="lgm-flow classifier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train a classifier on a data set's training images")
    test = sub.add_parser("test", help="test accuracy of the shipped classifier or of --weights")
    for p in (fit, test):
        p.add_argument("--data", required=True, help="mnist, fashion_mnist or cifar10")
        p.add_argument("--data-dir", help="folder with the data (default $LGM_DATA_DIR)")
    fit.add_argument("--out", required=True, help="weights file to write")
    fit.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    fit.add_argument("--batch-size", type=int, default=128)
    fit.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    fit.add_argument("--hflip", action="store_true", help="random horizontal flips (FashionMNIST, CIFAR-10)")
    fit.add_argument("--seed", type=int, default=0)
    test.add_argument("--weights", help="a file written by `classifier fit` (default: the shipped one)")
    test.add_argument("--n", type=int, help="test on the first N test images only")
    args = parser.parse_args(argv)
    if args.command == "fit":
        try:
            check_writable(args.out)  # before training
        except OSError as e:
            parser.error(str(e))
    try:
        arrays = load_images(args.data, args.data_dir)
        if args.command == "fit":
            if args.epochs < 1:
                parser.error(f"--epochs must be at least 1, got {args.epochs}")
            model = fit_classifier(
                classifier_for(args.data),
                arrays.x_train,
                arrays.y_train,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                hflip=args.hflip,
                seed=args.seed,
            )
            digest = save_classifier(model, args.out)
            # Score the weights as saved (float16), exactly as users will load them.
            model = load_classifier(path=args.out)
            result = {"data": args.data, "weights": args.out, "sha256": digest}
        else:
            model = load_classifier(args.data, args.weights)
            result = {"data": args.data, "weights": args.weights or "shipped"}
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    x, y = arrays.x_test, arrays.y_test
    if args.command == "test" and args.n:
        x, y = x[: args.n], y[: args.n]
    result.update(test_images=len(x), test_accuracy=accuracy(model, x, y, progress=True))
    print(json.dumps(result, indent=2))
    return result
