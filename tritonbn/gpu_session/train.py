"""A real network's training step with torch's batch norm and with tritonbn's fused layers.

``python -m tritonbn.gpu_session.train --out DIR`` builds torchvision's ResNet-50 (random weights, 1000
classes) in ``channels_last``, and for each dtype (``bf16``: float32 parameters under
``torch.autocast(dtype=torch.bfloat16)``, as mixed-precision training runs; ``fp32``) trains two copies
from the same initial weights on the same random batch (64 images of 224×224, SGD with momentum):

- ``torch``: the model as torchvision builds it (torch's batch norm: cuDNN on a GPU);
- ``tritonbn``: the same model after :func:`tritonbn.fx.fuse_fx`, which fuses the batch norms with the
  ReLU, or the add and ReLU, that ``forward`` applies after them (in ResNet-50, 49 of the 53; the 4
  downsample batch norms stay unfused). A model that ``torch.fx`` cannot trace gets
  ``tritonbn.convert_model(model, fuse_relu=True)`` instead (``nn.Sequential`` neighbours only), and its row
  a ``note`` saying so.

Each row (columns :data:`tritonbn.schema.TRAIN_COLUMNS`) gives the model's batch-norm layer count, how many
of them are fused with their ReLU (``fused_relu``: ``BatchNorm2dReLU`` and ``BatchNorm2dAddReLU``),
the loss of the first step (``loss_start``), the loss
after ``train_steps`` = 3 steps (a forward pass after the third update, ``loss_after``), and the time per
step (forward, backward and optimizer step; median, 20th and 80th percentiles over ``steps_timed`` steps
timed with CUDA events after two warm-up steps). ``--model tiny`` is a small local network with the same
layer patterns (conv → bn → relu in an ``nn.Sequential``, and a residual bn → add → relu block; all three
batch norms fused), for a CPU run in Triton's interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build_parser", "MODELS", "count_batch_norms", "fuse", "main", "run_training"]

LR = 0.01
TRAIN_STEPS = 3
WARMUP_STEPS = 2


class _TinyResidual(nn.Module):
    """conv → bn → relu → conv → bn, + identity, → relu: the torchvision BasicBlock pattern."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def _tiny(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        _TinyResidual(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def _resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


#: name -> (builder, number of classes, default batch, default image side)
MODELS = {"resnet50": (_resnet50, 1000, 64, 224), "tiny": (_tiny, 10, 4, 8)}


def count_batch_norms(model: nn.Module) -> tuple[int, int]:
    """``(batch-norm layers, those fused with an activation)`` of a model."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return len(bns), sum(bool(getattr(m, "applies_relu", False)) for m in bns)


def fuse(model: nn.Module) -> tuple[nn.Module, str]:
    """``(tritonbn's model, note)``: :func:`tritonbn.fx.fuse_fx`, or where ``torch.fx`` cannot trace the model,
    ``convert_model(model, fuse_relu=True)`` and a note saying why."""
    from torch.fx.proxy import TraceError

    import tritonbn
    from tritonbn.fx import fuse_fx

    try:
        return fuse_fx(model), ""
    except TraceError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        note = (
            f"not traceable by torch.fx ({type(cause).__name__}: {cause}); "
            "convert_model(fuse_relu=True): nn.Sequential neighbours only"
        )
        return tritonbn.convert_model(model, fuse_relu=True), note.replace("\n", " ")[:300]


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def _train_one(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: str, device: torch.device, timed_steps: int
) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def step() -> torch.Tensor:
        with autocast:
            loss = F.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    loss_start = float(step().detach())
    for _ in range(TRAIN_STEPS - 1):
        step()
    with torch.no_grad(), autocast:
        loss_after = float(F.cross_entropy(model(x), target))
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(timed_steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    median, p20, p80 = _quantiles(times)
    return {
        "ms_median": median,
        "ms_p20": p20,
        "ms_p80": p80,
        "steps_timed": timed_steps,
        "loss_start": loss_start,
        "loss_after": loss_after,
        "train_steps": TRAIN_STEPS,
    }


def run_training(
    model_name: str = "resnet50",
    dtypes: tuple[str, ...] = ("bf16", "fp32"),
    batch: int | None = None,
    image: int | None = None,
    timed_steps: int = 10,
    device: torch.device | str | None = None,
    max_seconds: float | None = None,
    on_row: Callable[[dict], None] | None = None,
    start: float | None = None,
) -> list[dict]:
    """Rows (provenance excluded) for every dtype × {torch, tritonbn}, in that order.

    A variant that raises is an ``error`` row. ``max_seconds`` counts from ``start`` (a
    ``time.monotonic()``; default: now): a variant starts only if 1.5 times the longest variant so far
    still fits, else it is a ``skipped`` row. ``on_row`` receives each row as soon as it is known.
    """
    build, classes, default_batch, default_image = MODELS[model_name]
    batch, image = batch or default_batch, image or default_image
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    base = build()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image, image, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, classes, (batch,), generator=gen).to(device)
    start = time.monotonic() if start is None else start
    emit = on_row or (lambda row: None)
    longest = 0.0
    rows = []
    for dtype in dtypes:
        for variant in ("torch", "tritonbn"):
            row = {
                "model": model_name,
                "batch": batch,
                "image": image,
                "dtype": dtype,
                "layout": "channels_last",
                "batch_norm": variant,
            }
            if max_seconds is not None and time.monotonic() - start + 1.5 * longest > max_seconds:
                row.update(status="skipped", note=f"not enough of the {max_seconds:g} s left")
                rows.append(row)
                emit(row)
                continue
            began = time.monotonic()
            try:
                model = copy.deepcopy(base).to(device, memory_format=torch.channels_last)
                if variant == "tritonbn":
                    model, note = fuse(model)
                    if note:
                        row["note"] = note
                row["bn_layers"], row["fused_relu"] = count_batch_norms(model)
                row.update(_train_one(model, x, target, dtype, device, timed_steps))
                row["status"] = "ok"
                del model
            except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
                row.update(status="error", note=f"{type(e).__name__}: {e}".replace("\n", " ")[:300])
            if device.type == "cuda":
                torch.cuda.empty_cache()
            longest = max(longest, time.monotonic() - began)
            rows.append(row)
            emit(row)
            print(
                f"  {model_name} {dtype} {variant:15s} {row['status']:7s} "
                + (
                    f"{row['ms_median']:.2f} ms/step, loss {row['loss_start']:.4f} -> {row['loss_after']:.4f}, "
                    f"{row['fused_relu']}/{row['bn_layers']} batch norms fused"
                    if row["status"] == "ok"
                    else row.get("note", "")
                ),  # fmt: skip
                flush=True,
            )
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tritonbn.gpu_session.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="results root (default bench_results)")
    p.add_argument("--model", choices=list(MODELS), default="resnet50")
    p.add_argument("--dtype", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=None, help="default: 64 for resnet50")
    p.add_argument("--image", type=int, default=None, help="image side (default: 224 for resnet50)")
    p.add_argument("--steps-timed", type=int, default=10)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="start no variant that would not end within this long"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Write ``<out>/<device>/<date>_<sha>_train.csv``; exit 1 when a variant raised."""
    from tritonbn import provenance
    from tritonbn.gpu_session.records import RecordWriter
    from tritonbn.gpu_session.session import process_age

    start = time.monotonic() - process_age()  # --max-seconds counts from the process start, imports included
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")  # fmt: skip
    with RecordWriter("train", args.out, provenance.collect(device)) as writer:  # each row as it is measured
        rows = run_training(
            args.model, tuple(args.dtype), args.batch, args.image, args.steps_timed, device, args.max_seconds,
            on_row=writer.write, start=start,
        )  # fmt: skip
    path = writer.path
    print(f"train: {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} variants ran -> {path}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
