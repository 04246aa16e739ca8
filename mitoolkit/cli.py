"""The ``mitoolkit`` command.

``mitoolkit compare``
    The seed paper's comparison (baseline, PCA-MINE, CNN-MINE, GAP-MINE over seeds) on layers of a
    trained network: writes ``results.json``, ``results.csv``, ``summary.csv`` and ``report.html``
    into ``--out`` and prints the summary table. Rows are saved as they finish; running the same
    command again resumes an interrupted run.
``mitoolkit layers``
    The layer names of a model, with their output shapes, to choose ``--layer``.
``mitoolkit plane``
    The information plane: trains the reference network and measures I(X; T) and I(T; Y) of the
    layers at chosen epochs; writes ``plane.json``, ``plane.csv``, ``plane.html`` and a checkpoint
    per epoch into ``--out``, prints the summary table. The same command again resumes.

Examples::

    mitoolkit layers --dataset digits
    mitoolkit compare --dataset digits --layer conv2 --seeds 5 --out results/digits
    mitoolkit compare --dataset cifar10 --data-root ~/data --layer conv2 --layer conv3 --out results/c10
    mitoolkit plane --dataset digits --layer conv1 --layer conv2 --epochs 10 --measure-epochs 0,1,2,5,10

Exit status: 0 done, 2 bad arguments or missing data (nothing computed), 130 interrupted (the
finished rows are kept).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mitoolkit`` command."""
    from mitoolkit.comparison import METHODS
    from mitoolkit.data import DATASETS

    parser = argparse.ArgumentParser(
        prog="mitoolkit",
        description="Mutual information inside trained neural networks: MINE with dimensionality "
                    "reducers (the comparison of Namekawa & Tezuka).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{compare,layers,plane}", required=True)

    def add_data_and_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="digits", choices=DATASETS,
                       help="digits is bundled (offline); CIFAR is read from --data-root (default: digits)")
        p.add_argument("--data-root", metavar="DIR", default=None,
                       help="folder holding cifar-10-python.tar.gz / cifar-100-python.tar.gz "
                            "(default: $MITOOLKIT_DATA, else ~/.cache/mitoolkit/data)")
        p.add_argument("--model", default="reference", metavar="reference|FILE",
                       help="'reference' (the reference CNN trained on --dataset, cached), or a "
                            "ReferenceCNN checkpoint / state_dict file (default: reference)")
        p.add_argument("--trust-pickle", action="store_true",
                       help="allow --model FILE to be a whole module saved by torch.save(model) "
                            "(a pickle runs code when loaded: only for files you trust)")

    compare = sub.add_parser(
        "compare", help="compare baseline, PCA-, CNN- and GAP-MINE on layers, over seeds",
        description="Compare the baseline, PCA-MINE, CNN-MINE and GAP-MINE on a trained network's "
                    "layers, over seeds; write results.json, results.csv and report.html.",
    )
    add_data_and_model(compare)
    compare.add_argument("--layer", action="append", required=True, metavar="NAME",
                         help="a layer to measure (repeat for several); `mitoolkit layers` lists them")
    compare.add_argument("--methods", default=",".join(METHODS), metavar="LIST",
                         help=f"comma-separated, from {','.join(METHODS)} (none = baseline) "
                              f"(default: {','.join(METHODS)})")
    compare.add_argument("--seeds", type=int, default=5, metavar="N",
                         help="estimates per (layer, method), seeds 0..N-1 (default: 5)")
    compare.add_argument("--n-samples", type=int, default=None, metavar="N",
                         help="images used, class-balanced (default: 5000 or all the split has)")
    compare.add_argument("--split", default="train", choices=("train", "test", "all"),
                         help="which images (default: train, those the reference network learnt)")
    compare.add_argument("--target", default="input", choices=("input", "label"),
                         help="input: I(X; T), ceiling ln N; label: I(T; Y), ceiling ln K (default: input)")
    compare.add_argument("--other-side", default="none", choices=("none", "pca"),
                         help="how the image / one-hot label is treated, the same for every "
                              "method (default: none, flattened)")
    compare.add_argument("--pca-components", type=int, default=32, metavar="K",
                         help="k of PCA-MINE, capped by the data (default: 32)")
    compare.add_argument("--max-steps", type=int, default=5000, metavar="N",
                         help="step budget per estimate; early stopping usually ends sooner (default: 5000)")
    compare.add_argument("--batch-size", type=int, default=None, metavar="B",
                         help="MINE minibatch size (default: estimate_mi's, 256)")
    compare.add_argument("--transform-strength", type=float, default=1.0, metavar="S",
                         help="scale of the minor random transformations (shift); 0 turns shifts off (default: 1)")
    compare.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    compare.add_argument("--noise", action="store_true", help="add Gaussian noise to the transformations")
    compare.add_argument("--data-seed", type=int, default=0, metavar="S",
                         help="seeds the choice of images and the transformations (default: 0)")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    compare.add_argument("--threads", type=int, default=1, metavar="N",
                         help="CPU threads (default: 1, fastest for these small networks; 0: torch's default)")
    compare.add_argument("--out", default="mitoolkit-out", metavar="DIR",
                         help="output folder (default: mitoolkit-out)")
    compare.add_argument("--overwrite", action="store_true",
                         help="delete rows in --out computed with other arguments")
    compare.add_argument("--no-report", action="store_true", help="do not write report.html")
    compare.add_argument("--vectorize-seeds", action="store_true",
                         help="train the seeds of each layer and fixed-reducer method together in "
                              "one vectorized pass (much faster on a GPU; cnn stays seed by seed)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")

    layers = sub.add_parser("layers", help="list a model's layers with their output shapes",
                            description="List the layer names (for --layer) with their output shapes.")
    add_data_and_model(layers)
    from mitoolkit.cli_plane import add_plane_parser

    add_plane_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mitoolkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores the warning display afterwards
        _plain_warnings()
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    from mitoolkit.data import DatasetNotFoundError

    try:
        if args.command == "layers":
            return _layers(args)
        if args.command == "plane":
            from mitoolkit.cli_plane import run_plane

            return run_plane(args)
        return _compare(args)
    except (ValueError, DatasetNotFoundError, ImportError) as err:
        print(f"mitoolkit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print(f"\nmitoolkit {args.command}: interrupted"
              + (f"; finished rows are kept in {out}: run the same command again to resume." if out else "."),
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _model_argument(args: argparse.Namespace, dataset_name: str):
    """'reference', a path (loaded safely by compare_reducers) or a module (--trust-pickle)."""
    if args.model == "reference" or not args.trust_pickle:
        return args.model
    from mitoolkit.data import load_dataset
    from mitoolkit.experiments import load_model

    return load_model(args.model, dataset=load_dataset(dataset_name, root=args.data_root),
                      trust_pickle=True)


def _layers(args: argparse.Namespace) -> int:
    from mitoolkit.data import load_dataset
    from mitoolkit.experiments import load_model
    from mitoolkit.layers import list_layers
    from mitoolkit.models import ReferenceCNN

    data = load_dataset(args.dataset, root=args.data_root, train=False)
    c, h, _ = data.image_shape
    if args.model == "reference":
        model = ReferenceCNN(c, data.n_classes, h)  # same layers as the trained one
    else:
        model = load_model(args.model, dataset=data, trust_pickle=args.trust_pickle)
    print(f"layers of {type(model).__name__} on {args.dataset} images (N, {c}, {h}, {h}); "
          "output shape per sample:")
    print(list_layers(model, data.images[:2]))
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from mitoolkit.data import minor_transforms
    from mitoolkit.experiments import compare_reducers

    options = {}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    try:
        transforms = minor_transforms(strength=args.transform_strength, flip=not args.no_flip,
                                      noise=args.noise)
    except ValueError as err:
        raise ValueError(f"--transform-strength: {err}") from None
    print(f"mitoolkit compare: {args.dataset} ({args.split}), layers {', '.join(args.layer)}, "
          f"methods {args.methods}, {args.seeds} seeds, target {args.target}, out {args.out}",
          file=sys.stderr)
    comparison = compare_reducers(
        args.layer,
        model=_model_argument(args, args.dataset),
        dataset=args.dataset,
        methods=args.methods,
        seeds=args.seeds,
        target=args.target,
        n_samples=args.n_samples,
        split=args.split,
        data_root=args.data_root,
        transforms=transforms,
        data_seed=args.data_seed,
        other_side=args.other_side,
        pca_components=args.pca_components,
        max_steps=args.max_steps,
        estimator_options=options,
        device=args.device,
        cpu_threads=args.threads or None,
        out=args.out,
        overwrite=args.overwrite,
        report=not args.no_report,
        progress=not args.quiet,
        vectorize_seeds=args.vectorize_seeds,
    )
    print(comparison.summary_table())
    for layer in comparison.layers:
        print(f"\nthe seed paper's findings on {layer}:")
        for finding in comparison.findings(layer):
            print(f"  - {finding}")
    out = Path(args.out)
    written = ["results.json", "results.csv", "summary.csv"] + ([] if args.no_report else ["report.html"])
    print(f"\nwritten: {', '.join(str(out / name) for name in written)}")
    if not comparison.complete:
        print(f"mitoolkit compare: interrupted; {len(comparison.rows)} finished rows are kept in "
              f"{out}: run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _plain_warnings() -> None:
    """Warnings as one readable line on stderr, without the source line."""
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
