"""The run commands: ``demo``, ``train``, ``sensitivity``, ``evaluate``, ``predict``,
``compare``, ``study`` and ``pretrain-demo-backbone``.

Exit status: 0 done, 1 the run failed (a non-finite loss), 2 a usage error (bad option,
configuration or file), printed as one line naming the command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fishertune.cli.guard import check_output_file, check_output_folder
from fishertune.cli.run_arguments import config_arguments, parse_methods, run_config

__all__ = ["add_model_commands"]


def _say_done(report: Path | None) -> None:
    if report is not None:
        print(f"report: {report}")


def _cmd_train(args: argparse.Namespace) -> int:
    from fishertune.workflows.training import train_and_report

    _, result, report = train_and_report(
        run_config(args), resume=args.resume, progress=not args.no_progress, device=args.device
    )
    if report is not None and result.results is not None:
        print(result.results.domain_table())
    _say_done(report)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from fishertune.engine.estimate_file import estimate_path
    from fishertune.engine.training_state import CHECKPOINTS
    from fishertune.workflows.training import sensitivity_map

    config = run_config(args)
    scores, figure, quality = sensitivity_map(
        config, progress=not args.no_progress, device=args.device
    )
    if figure is not None:
        total = sum(int(s.isfinite().sum()) for s in scores.values())
        run = Path(config.output.run_dir)
        print(f"scored {total:,} candidate elements of {len(scores)} tensors")
        print(f"scores: {estimate_path(run / CHECKPOINTS)}")
        print(f"heatmap: {figure}")
        for line in quality.describe() if quality is not None else []:
            print(f"estimate quality: {line}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fishertune.workflows.checkpoint_evaluation import evaluate_checkpoint

    if args.json is not None:
        check_output_file(args.json, "--json")

    results = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        protocol=args.protocol,
        mode=args.mode,
        eval_images=args.eval_images,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    print(results.to_markdown())
    if args.json is not None:
        results.to_json(args.json)
        print(f"results: {args.json}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fishertune.workflows.prediction import predict_images

    check_output_folder(args.out, "--out")

    predictions = predict_images(
        args.checkpoint,
        args.images,
        args.out,
        alpha=args.alpha,
        mode=args.mode,
        test_as=None if args.native else args.test_as,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"{len(predictions)} image(s): ids, label ids, masks and overlays in {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fishertune.workflows.export import export_model

    check_output_file(args.out, "--out")
    done = export_model(args.run, args.out, use_ema=not args.no_ema)
    how = "folded into the backbone's weights" if done.merged else "kept as its own modules"
    print(f"{done.path}: {done.tensors} tensors; method {done.method!r} {how}")
    print("load it with fishertune.workflows.export.load_exported(path)")
    return 0


def parse_seeds(text: str | None, first: int) -> list[int] | None:
    """``--seeds``: a count N (seeds ``first`` … ``first`` + N − 1) or a comma-separated list
    (``0,3,7``); None when not given."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"--seeds: expected a count (e.g. 3) or a comma-separated list of integers, got "
            f"{text!r}"
        ) from None
    if "," not in text:
        if len(numbers) != 1 or numbers[0] < 1:
            raise ValueError(f"--seeds: a count must be a positive integer, got {text!r}")
        return list(range(first, first + numbers[0]))
    if not numbers or len(set(numbers)) != len(numbers):
        raise ValueError(f"--seeds: give distinct integers, got {text!r}")
    return numbers


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="N|LIST",
        help=(
            "run every method with N seeds (from schedule.seed on) or with the listed seeds "
            "(e.g. 0,1,2), each in OUT/<method>/seed<k>; the table then gives mean ± 95%% CI "
            "and paired differences"
        ),
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from fishertune.workflows.comparison import compare

    methods = parse_methods(args.methods, default=())
    config = run_config(args)
    comparison = compare(
        config,
        methods,
        out_dir=args.out,
        seeds=parse_seeds(args.seeds, config.schedule.seed),
        reference=args.reference,
        validity=args.validity,
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
    )
    print(comparison.table)
    _say_done(comparison.report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fishertune.workflows.demo import DEMO_METHODS, DEMO_SETTINGS, run_demo

    methods = args.methods.split(",") if args.methods else list(DEMO_METHODS)
    comparison = run_demo(
        quick=args.quick,
        out_dir=args.out,
        methods=methods,
        seeds=parse_seeds(args.seeds, DEMO_SETTINGS["schedule"]["seed"]),
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
    )
    print()
    print(comparison.table)
    print()
    print(
        "training time per method: "
        + ", ".join(f"{m} {s:.0f} s" for m, s in comparison.seconds.items())
    )
    if len(comparison.seeds) == 1:
        print(
            "one seed per method (the demo's time: about 6-12 minutes on 2 CPU cores). For mean ± "
            "95% CI over seeds and paired differences run: fishertune compare configs/demo.yaml "
            f"--methods {','.join(methods)} --seeds 3"
        )
    _say_done(comparison.report)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from fishertune.workflows.study import run_study

    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    seeds = parse_seeds(args.seeds, 0) or [0, 1, 2]
    started = time.perf_counter()
    study = run_study(
        only=only,
        seeds=seeds,
        out_dir=args.out,
        resume=args.resume,
        quick=args.quick,
        progress=not args.no_progress,
        device=args.device,
        report_only=args.report_only,
    )
    print()
    for name, part in study.record["parts"].items():
        print(f"{name:13s} {part['verdict']:13s} {part['claim']}")
    print()
    print(f"study finished in {(time.perf_counter() - started) / 60:.1f} min")
    _say_done(study.markdown)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from fishertune.models.demo_vit import demo_vit_weights_path
    from fishertune.workflows.pretrain_demo import pretrain_demo_backbone

    output = Path(args.out) if args.out else demo_vit_weights_path()
    options = {
        key: value
        for key, value in (
            ("steps", args.steps),
            ("corpus_size", args.corpus_size),
            ("batch_size", args.batch_size),
        )
        if value is not None
    }
    result = pretrain_demo_backbone(
        output, seed=args.seed, progress=not args.no_progress, **options
    )
    print(f"wrote {result.path}")
    print(
        f"pretext pixel accuracy {100 * result.pixel_accuracy:.1f}% on held-out scenes of all "
        f"styles, in {result.elapsed_seconds:.0f} s"
    )
    return 0


def _common(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the run commands on the top-level sub-parser."""
    demo = sub.add_parser(
        "demo",
        help="FisherTune vs Full, Freeze, Rein and LoRA on the embedded benchmark (offline)",
        description=(
            "Fine-tunes the shipped demo backbone on the synthetic source style with each "
            "method, evaluates on the source and five unseen styles, prints the per-domain "
            "table and writes report.md with figures. One seed per method; 6-12 minutes on 2 "
            "CPU cores, depending on the machine (--quick: about 1.5)."
        ),
    )
    demo.add_argument("--quick", action="store_true", help="the smoke-test size")
    demo.add_argument("--out", default=None, help="output folder (default runs/demo[_quick])")
    demo.add_argument("--methods", default="", help="comma-separated subset of the methods")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    _seed_arguments(demo)
    _common(demo)
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train",
        help="train one configuration (warm-up → estimate → tune for FisherTune)",
        description=(
            "Runs the staged trainer on CONFIG and writes checkpoints, metrics.csv, "
            "TensorBoard logs and report.md to output.run_dir. Multi-GPU: launch with "
            "torchrun --nproc-per-node=N -m fishertune.cli train CONFIG."
        ),
    )
    config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue from checkpoints/last")
    _common(train)
    train.set_defaults(func=_cmd_train)

    sensitivity = sub.add_parser(
        "sensitivity",
        help="estimate and save the DR-FIM and draw its per-block heatmap (paper Fig. 6)",
        description=(
            "Runs the warm-up and estimation stages of CONFIG (method fishertune or "
            "childtune_d), saves the scores as checkpoints/sensitivity and draws "
            "figures/sensitivity.png: blocks × {Q, K, V, FFN}."
        ),
    )
    config_arguments(sensitivity)
    _common(sensitivity)
    sensitivity.set_defaults(func=_cmd_sensitivity)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on the run's domains or on given data sets",
        description=(
            "CHECKPOINT is a run folder (its best checkpoint, else last) or a checkpoint "
            "JSON. Prints the per-domain and per-class tables."
        ),
    )
    evaluate.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a run folder or a checkpoint JSON"
    )
    evaluate.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME[=ROOT]",
        help="a data set to evaluate: NAME=ROOT, or a style name for synthetic runs (repeatable)",
    )
    evaluate.add_argument("--protocol", default=None, help="rein, fullres or synthetic")
    evaluate.add_argument(
        "--mode",
        default=None,
        choices=["slide", "whole"],
        help="sliding-window or whole-image inference (default: the protocol's)",
    )
    evaluate.add_argument(
        "--eval-images",
        type=int,
        default=None,
        metavar="N",
        help="evaluate the first N images of each data set (default: all)",
    )
    evaluate.add_argument(
        "--batch-size", type=int, default=2, metavar="N", help="images per forward pass"
    )
    evaluate.add_argument(
        "--workers", type=int, default=0, metavar="N", help="data loader worker processes"
    )
    evaluate.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    _common(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = sub.add_parser(
        "predict",
        help="segment images with a checkpoint: train ids, label ids, colour masks, overlays",
        description=(
            "Segments each image (a folder: its images) as the run's protocol tests it: "
            "resized to the protocol's test size (--test-as: a data set's), in its mode, the "
            "scores resized back to the image. Writes <stem>_ids.png (train ids), "
            "<stem>_labelIds.png (Cityscapes label ids, the benchmark servers' format, for "
            "19-class models), <stem>_mask.png (colours) and <stem>_overlay.png."
        ),
    )
    predict.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a run folder or a checkpoint JSON"
    )
    predict.add_argument(
        "images", metavar="IMAGE", nargs="+", help="image files or folders of images"
    )
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder")
    predict.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    predict.add_argument(
        "--test-as",
        default="",
        metavar="DATASET",
        help="use this data set's test size under the protocol (default: its default size)",
    )
    predict.add_argument(
        "--native", action="store_true", help="predict at each image's own size instead"
    )
    predict.add_argument(
        "--mode",
        default=None,
        choices=["slide", "whole"],
        help="sliding-window or whole-image inference (default: the run's protocol)",
    )
    _common(predict)
    predict.set_defaults(func=_cmd_predict)

    export = sub.add_parser(
        "export",
        help="write a trained run as one standalone model file (method merged where possible)",
        description=(
            "Loads RUN's checkpoint (best, else last; EMA weights where kept), folds the "
            "method into the backbone's weights where it allows (full, sparse methods, "
            "FisherTune, LoRA), and writes every tensor with the model configuration to one "
            "checked safetensors file, loadable without the run folder or base weights by "
            "fishertune.workflows.export.load_exported."
        ),
    )
    export.add_argument("run", metavar="RUN", help="a run folder or a checkpoint JSON")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    export.add_argument("--no-ema", action="store_true", help="export the raw, not EMA, weights")
    export.set_defaults(func=_cmd_export)

    comparison = sub.add_parser(
        "compare",
        help="train several methods on one configuration; write the Table-1-style table",
        description=(
            "Trains each method of --methods with CONFIG (the configured method keeps its "
            "options, the others use their defaults) in OUT/<method> and writes OUT/report.md."
        ),
    )
    config_arguments(comparison, out=False)
    comparison.add_argument("--methods", required=True, help="comma-separated method names")
    comparison.add_argument("--out", default=None, help="output folder (default output.run_dir)")
    comparison.add_argument("--resume", action="store_true", help="continue interrupted runs")
    _seed_arguments(comparison)
    comparison.add_argument(
        "--reference",
        default="freeze",
        help="method the others are compared to, paired over seeds (default freeze)",
    )
    comparison.add_argument(
        "--validity",
        action="store_true",
        help="check the benchmark's validity criteria V1-V3 on the baselines (full, freeze)",
    )
    _common(comparison)
    comparison.set_defaults(func=_cmd_compare)

    study = sub.add_parser(
        "study",
        help="the paper's experiments on the embedded benchmark, with seeds and verdicts",
        description=(
            "Runs the parts of the study (table1, scores, estimator, perturbation, budget, "
            "capacity, selection: the paper's Table 1, Table 4, Fig. 5, Table 5, Appendix C, "
            "Rein's Fig. 5 and why random selection beats Fisher selection) with the demo's "
            "settings and the same seeds for every arm, and writes study.md, study.json and "
            "the figures. Each claim's verdict comes from the 95% interval of its paired "
            "difference. Arms shared by parts run once; --resume continues a killed study; "
            "--report-only writes the outputs from the runs already finished. Prints the "
            "remaining time as it goes."
        ),
    )
    study.add_argument(
        "--only", default="", metavar="PARTS", help="comma-separated parts (default: all)"
    )
    study.add_argument(
        "--seeds", default=None, metavar="N|LIST", help="N seeds from 0, or a list (default 3)"
    )
    study.add_argument("--out", default=None, help="output folder (default runs/study[_quick])")
    study.add_argument("--resume", action="store_true", help="continue an interrupted study")
    study.add_argument("--quick", action="store_true", help="every part at the smoke-test size")
    study.add_argument(
        "--report-only",
        action="store_true",
        help="write study.json, study.md and the figures from the finished runs' records of "
        "--out, training nothing (every run of the parts and seeds must have finished)",
    )
    _common(study)
    study.set_defaults(func=_cmd_study)

    pretrain = sub.add_parser(
        "pretrain-demo-backbone",
        help="rebuild the demo backbone (pretraining on synthetic scenes of all styles)",
        description=(
            "Pretrains the small ViT of the embedded benchmark with the coarse 7-category "
            "pretext on scenes of all six styles, deterministically, and writes its weights "
            "(default: over the file shipped with the package) with a JSON recipe."
        ),
    )
    pretrain.add_argument("--out", default=None, metavar="PATH", help="weights file to write")
    pretrain.add_argument(
        "--steps", type=int, default=None, help="pretraining steps (default: the recipe's)"
    )
    pretrain.add_argument(
        "--corpus-size",
        type=int,
        default=None,
        help="synthetic scenes in the corpus (default: the recipe's)",
    )
    pretrain.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: the recipe's)"
    )
    pretrain.add_argument("--seed", type=int, default=0, help="seeds the scenes and the weights")
    pretrain.add_argument("--no-progress", action="store_true", help="hide progress bars")
    pretrain.set_defaults(func=_cmd_pretrain)
