"""``fusion-emotion export``: checkpoint (or demo weights) -> Triton model repository."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint (or random demo weights) to a complete Triton model repository",
        description="Export the encoders to ONNX (validated against PyTorch), the fusion head to numpy, "
        "and write a complete Triton model repository with cpu and gpu profiles (its Python-backend models "
        "import the fusion_emotion package, which the serving environment must provide).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="fusion-emotion/v1 checkpoint (.pt)")
    src.add_argument("--init", choices=["random"], help="build deterministic random (UNTRAINED) demo weights")
    p.add_argument("--seed", type=int, default=0, help="seed for --init random (default 0)")
    p.add_argument(
        "--hubert-pretrained", metavar="DIR", help="local Hugging Face HuBERT directory for the audio encoder"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="model repository to write")
    p.add_argument(
        "--torchscript",
        action="store_true",
        help="also write a traced TorchScript model.pt beside each model.onnx (validated the same way); "
        "no profile serves it: every config uses the ONNX graph",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |ONNX - PyTorch| allowed (default 1e-4)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # optional: [export] (torch, transformers: `export --help` needs neither)
    from fusion_emotion.export.checkpoint import CheckpointError, load_checkpoint, load_hubert_pretrained, random_model
    from fusion_emotion.export.onnx_export import ExportValidationError
    from fusion_emotion.export.repository import write_repository

    try:
        loaded = load_checkpoint(args.checkpoint) if args.checkpoint else random_model(args.seed)
        if args.hubert_pretrained:
            load_hubert_pretrained(loaded, args.hubert_pretrained)
        if not loaded.trained:
            log.warning("%s", loaded.provenance)
        report = write_repository(
            loaded,
            args.output,
            torchscript=args.torchscript,
            opset=args.opset,
            tolerance=args.tolerance,
            force=args.force,
        )
    except (CheckpointError, ExportValidationError, FileExistsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    for check in report.checks:
        sys.stdout.write(f"  {check}\n")
    sys.stdout.write(f"model repository: {report.output}\nweights: {report.provenance}\n")
    if not report.trained:
        log.warning("this repository is UNTRAINED (random weights): demo and tests only")
    return 0
