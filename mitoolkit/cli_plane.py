"""``mitoolkit plane``: the information plane from the command line (part of :mod:`mitoolkit.cli`).

Trains the reference network and measures I(X; T) and I(T; Y) of the layers at chosen epochs
(:func:`mitoolkit.plane.information_plane`); writes ``plane.json``, ``plane.csv``,
``plane_summary.csv``, ``plane.html`` and a checkpoint per epoch into ``--out``; prints the summary
table and whether I(X; T) falls with depth. Bad arguments are reported before any work (exit 2, by
``cli.main``); the same command again resumes an interrupted run (exit 130 when interrupted).

    mitoolkit plane --dataset digits --layer conv1 --layer conv2 --epochs 10 \\
        --measure-epochs 0,1,2,5,10 --reducer pca --seeds 2 --out results/plane
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_plane_parser", "run_plane"]


def add_plane_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``plane`` subcommand to the ``mitoolkit`` parser's subparsers."""
    from mitoolkit.data import DATASETS
    from mitoolkit.plane import DEFAULT_MAX_STEPS, DEFAULT_REDUCER

    plane = sub.add_parser(
        "plane", help="the information plane: I(X; T) and I(T; Y) of layers across training",
        description="Train the reference network and measure I(X; T) and I(T; Y) of its layers at "
                    "chosen epochs; write plane.json, plane.csv, plane.html and a checkpoint per "
                    "epoch into --out. The same command again resumes an interrupted run.",
    )
    plane.add_argument("--dataset", default="digits", choices=DATASETS,
                       help="digits is bundled (offline); CIFAR is read from --data-root (default: digits)")
    plane.add_argument("--data-root", metavar="DIR", default=None,
                       help="folder holding the CIFAR archives (default: $MITOOLKIT_DATA, else "
                            "~/.cache/mitoolkit/data)")
    plane.add_argument("--layer", action="append", required=True, metavar="NAME",
                       help="a layer to measure (repeat for several); `mitoolkit layers` lists them")
    plane.add_argument("--epochs", type=int, default=None, metavar="E",
                       help="epochs to train (default: the reference recipe's, 10 on digits)")
    plane.add_argument("--measure-epochs", default="all", metavar="LIST",
                       help="comma-separated epochs to measure after, 0 = untrained, e.g. 0,1,2,5,10 "
                            "(default: all, 0..E)")
    plane.add_argument("--reducer", default=DEFAULT_REDUCER, metavar="NAME",
                       help=f"what happens to the activation: pca, gap, none (baseline) or cnn "
                            f"(default: {DEFAULT_REDUCER})")
    plane.add_argument("--seeds", type=int, default=2, metavar="N",
                       help="estimates per (epoch, layer, quantity), seeds 0..N-1 (default: 2)")
    plane.add_argument("--n-samples", type=int, default=None, metavar="N",
                       help="training images measured, class-balanced (default: 5000 or all there are)")
    plane.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, metavar="N",
                       help=f"step budget per estimate (default: {DEFAULT_MAX_STEPS})")
    plane.add_argument("--batch-size", type=int, default=None, metavar="B",
                       help="MINE minibatch size (default: estimate_mi's, 256)")
    plane.add_argument("--pca-components", type=int, default=32, metavar="K",
                       help="k of the PCA reducer (default: 32)")
    plane.add_argument("--other-side", default="none", choices=("none", "pca"),
                       help="how the image / one-hot label is treated (default: none, flattened)")
    plane.add_argument("--data-seed", type=int, default=0, metavar="S",
                       help="seeds the images and the transformations (default: 0)")
    plane.add_argument("--train-seed", type=int, default=0, metavar="S",
                       help="seeds the network's initialisation and training order (default: 0)")
    plane.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    plane.add_argument("--threads", type=int, default=1, metavar="N",
                       help="CPU threads (default: 1; 0: torch's default)")
    plane.add_argument("--out", default="mitoolkit-plane", metavar="DIR",
                       help="output folder (default: mitoolkit-plane)")
    plane.add_argument("--overwrite", action="store_true",
                       help="delete checkpoints and rows in --out made with other arguments")
    plane.add_argument("--no-report", action="store_true", help="do not write plane.html")
    plane.add_argument("--quiet", action="store_true", help="no progress bar")


def _measure_epochs(text: str) -> list[int] | None:
    if text.strip().lower() == "all":
        return None
    try:
        epochs = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        epochs = []
    if not epochs:
        raise ValueError(f"--measure-epochs must be 'all' or comma-separated epochs such as 0,1,2,5,10; "
                         f"received {text!r}.")
    return epochs


def run_plane(args: argparse.Namespace) -> int:
    """Run ``mitoolkit plane``; returns the exit status (errors are reported by cli.main)."""
    from mitoolkit.cli import EXIT_INTERRUPTED, EXIT_OK
    from mitoolkit.plane import information_plane

    options = {}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    print(f"mitoolkit plane: {args.dataset}, layers {', '.join(args.layer)}, reducer {args.reducer}, "
          f"{args.seeds} seeds, measured after epochs {args.measure_epochs}, out {args.out}",
          file=sys.stderr)
    plane = information_plane(
        args.layer,
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=args.epochs,
        epochs_to_measure=_measure_epochs(args.measure_epochs),
        reducer=args.reducer,
        seeds=args.seeds,
        n_samples=args.n_samples,
        max_steps=args.max_steps,
        pca_components=args.pca_components,
        other_side=args.other_side,
        data_seed=args.data_seed,
        train_seed=args.train_seed,
        estimator_options=options,
        device=args.device,
        cpu_threads=args.threads or None,
        out=args.out,
        overwrite=args.overwrite,
        report=not args.no_report,
        progress=not args.quiet,
    )
    print(plane.summary_table())
    for quantity, label in (("ixt", "I(X; T)"), ("ity", "I(T; Y)")):
        checks = plane.check_dpi(quantity)
        if checks:
            print(f"\ndoes {label} fall with depth? (data-processing inequality: it cannot rise)")
            for check in checks:
                print(f"  - {check}")
    out = Path(args.out)
    written = ["plane.json", "plane.csv", "plane_summary.csv"] + ([] if args.no_report else ["plane.html"])
    print(f"\nwritten: {', '.join(str(out / name) for name in written)}")
    if not plane.complete:
        print(f"mitoolkit plane: interrupted; {len(plane.rows)} finished estimates and the trained "
              f"epochs are kept in {out}: run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
