"""``densemtl predict``: run a trained checkpoint on PNG/JPEG images.

For every image and task it writes ``<stem>_<task>.png`` (colourised: segmentation palette,
depth colormap, normals as RGB) and ``<stem>_<task>.npy`` (raw prediction at the image's own
size: class indices HxW int64, depth HxW float32, unit normals HxWx3 float32 channels-last as in
the NYUv2 layout); with ``--attention``, one picture per recorded attention map in
``<stem>_attention/``. The image is resized to the model's training size for the forward pass and the
raw outputs are resized back bilinearly before they become predictions.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict every task for images (PNG/JPEG)",
        description="Run a checkpoint on images; write colourised PNGs and raw .npy per task.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--size", metavar="HxW",
                   help="input size for the network (default: the training size; must be a multiple of "
                        "the model's size multiple)")
    p.add_argument("--attention", action="store_true",
                   help="also draw the model's attention maps (models that record attention)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=run)


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> 3 x H x W float32 RGB in [0, 1]; UserError naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"image {path} is not a readable PNG/JPEG file ({e.__class__.__name__})") from None
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def predict_image(model, tasks, image: torch.Tensor, size: tuple[int, int], device) -> dict[str, torch.Tensor]:
    """Predictions ``{task: activated prediction}`` of one 3xHxW image at its own size."""
    x = F.interpolate(image[None].to(device), size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        outputs = model(x)
    h, w = image.shape[-2:]
    preds = {}
    for name, task in tasks.items():
        raw = F.interpolate(outputs[name].float(), size=(h, w), mode="bilinear", align_corners=False)
        preds[name] = task.activate(raw)[0].cpu()
    return preds


def _raw_array(kind: str, pred: torch.Tensor) -> np.ndarray:
    if kind == "label":
        return pred.numpy().astype(np.int64)
    if kind == "normal":
        return pred.numpy().transpose(1, 2, 0).astype(np.float32)
    return pred.numpy()[0].astype(np.float32)


def run(args: argparse.Namespace) -> int:
    from .. import viz
    from ..engine import build
    from ..engine.checkpoint import load_checkpoint
    from ..engine.config import parse_size
    from ..models.registry import check_input_size

    images = {p: load_image(p) for p in args.images}  # every file is checked before any work
    ckpt = load_checkpoint(args.checkpoint)
    cfg, tasks, model = build.model_from_checkpoint(ckpt)
    device = build.device_of(args.device)
    model = model.to(device)
    size = parse_size(args.size, "--size") if args.size else tuple(cfg.data.size)
    check_input_size(cfg.model.name, *size)
    attention = _attention_module(cfg.model.name) if args.attention else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems: dict[str, int] = {}
    for path, image in images.items():
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two inputs with the same name must not overwrite each other
            stem = f"{stem}_{stems[stem]}"
        preds = predict_image(model, tasks, image, size, device)
        for name, task in tasks.items():
            viz.save_png(viz.colorize(task, preds[name]), out / f"{stem}_{name}.png")
            np.save(out / f"{stem}_{name}.npy", _raw_array(task.target_kind, preds[name]))
        if attention is not None:
            _save_attention(attention, model, cfg.model.name, image, size, device, out, stem)
        print(f"{path} -> {out}/{stem}_{{{','.join(tasks)}}}.png/.npy")
    return 0


def _attention_module(model_name: str):
    if importlib.util.find_spec("densemtl.attention_viz") is None:
        raise UserError(f"--attention: this installation cannot draw attention maps "
                        f"(densemtl.attention_viz is missing), so model {model_name!r} has none to show")
    return importlib.import_module("densemtl.attention_viz")


def _save_attention(attention_viz, model, model_name, image, size, device, out: Path, stem: str) -> None:
    from ..models.attention import record_attention

    x = F.interpolate(image[None].to(device), size=size, mode="bilinear", align_corners=False)
    with record_attention(model) as maps, torch.no_grad():
        model(x)
    if not maps:
        raise UserError(f"--attention: model {model_name!r} has no attention to show")
    attention_viz.save_attention_pictures(maps, x[0].cpu(), out / f"{stem}_attention")
