"""``dyno train MODEL`` and ``dyno eval MODEL``: argument parsing only; the work is in ``dyno.zoo``."""

from __future__ import annotations

import argparse
import json

from dyno.cli._args import nonnegative_int, positive_int

__all__ = ["register"]


def _models_epilog() -> str:
    try:
        from dyno import zoo
    except ImportError:  # a device install (dyno[device]): onnxruntime, no torch
        return "models: (the zoo needs the full install, with torch: pip install dyno)"

    lines = ["models:"]
    for name in zoo.list_models():
        entry = zoo.get_model(name)
        lines.append(f"  {name:20s} {entry.default_data or '-':18s} {entry.description}")
    lines.append("  (torchvision classification models by name, when torchvision is installed)")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    epilog = _models_epilog()
    train = subparsers.add_parser(
        "train",
        help="train a reference Fashion-MNIST model and cache its weights",
        description="Train MODEL (fmnist-resnet or fmnist-vgg) on Fashion-MNIST's training split with a\n"
        "fixed seed, print its top-1 on the test split and the time taken, and cache the weights\n"
        "where `dyno eval` and the other commands find them (DYNO_CACHE, default ~/.cache/dyno).",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("model", help="model name, e.g. fmnist-resnet")
    train.add_argument("--epochs", type=positive_int, help="epochs (default: the model's recipe)")
    train.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    train.add_argument("--limit", type=positive_int,
                       help="train on the first N images only, a quick check (weights are then not cached)")
    train.add_argument("--data", metavar="DIR",
                       help="directory with the Fashion-MNIST IDX files (default: DYNO_FASHION_MNIST, "
                       "else /usr/share/datasets/fashion-mnist)")
    train.add_argument("--threads", type=positive_int,
                       help="torch threads (default 1: on a shared 2-core machine two threads contend badly)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print one JSON document")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="top-1 accuracy of a model on a labelled dataset",
        description="Measure MODEL's top-1 accuracy on labelled data: its default dataset, a named one\n"
        "(fashion-mnist, imagenet-samples) or a folder (labels.tsv, class subfolders, or IDX files).",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("model", help="model name, e.g. efficientnet-lite0")
    evaluate.add_argument("--data", help="dataset name or directory (default: the model's own)")
    evaluate.add_argument("--split", default="test", choices=("test", "train"),
                          help="Fashion-MNIST split (default test)")
    evaluate.add_argument("--weights", default="trained",
                          help="trained (default), random, trained-or-random, or a state_dict file")
    evaluate.add_argument("--limit", type=positive_int, help="only the first N items")
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--json", action="store_true",
                          help='print one JSON document {"model", "data", "n", "top1"} (top1 in 0..1)')
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> None:
    from dyno import zoo
    from dyno.bench.console import RichProgress

    with RichProgress(not args.no_progress and not args.json) as progress:
        result = zoo.train(args.model, epochs=args.epochs, seed=args.seed, limit=args.limit,
                           data_root=args.data, threads=args.threads, progress=progress)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    minutes, seconds = divmod(round(result.seconds), 60)
    where = f"weights saved to {result.path}" if result.path else "weights not saved (--limit run)"
    print(f"{result.model}: test top-1 {result.test_accuracy:.2%} on {result.test_images} images; "
          f"trained in {minutes}m{seconds:02d}s ({result.epochs} epochs on {result.train_images} images, "
          f"seed {result.seed}, {result.threads} thread{'s' if result.threads > 1 else ''}); {where}")


def run_eval(args: argparse.Namespace) -> None:
    from dyno import zoo
    from dyno.bench.console import RichProgress

    entry = zoo.get_model(args.model)
    data = args.data or entry.default_data
    if data is None:
        from dyno.errors import ConfigError

        raise ConfigError(f"model {entry.name!r} has no default dataset; pass --data NAME_OR_DIR")
    dataset = zoo.load_dataset(data, split=args.split, model=entry)
    model = zoo.load_model(entry, weights=args.weights)
    with RichProgress(not args.no_progress and not args.json) as progress:
        top1 = zoo.evaluate(model, dataset, batch_size=args.batch_size, limit=args.limit, progress=progress)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if args.json:
        print(json.dumps({"model": entry.name, "data": str(data), "n": n, "top1": top1}))
        return
    print(f"{entry.name} on {data}: top-1 {top1:.1%} ({round(top1 * n)}/{n}), weights {args.weights}")
