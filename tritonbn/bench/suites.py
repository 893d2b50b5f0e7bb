"""Benchmark shape suites and the minimum-traffic model. Pure data and arithmetic: no GPU, no timing.

A :class:`Shape` is the logical shape ``(N, C, *spatial)`` of a batch-norm input. Suites are selected by
name (:data:`SUITES`, :func:`get_suite`); every suite is deduplicated and in a stable order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "LAYOUTS",
    "OWN_PASSES",
    "PASSES",
    "SUITES",
    "Shape",
    "get_suite",
    "own_traffic_bytes",
    "quick_shapes",
    "resnet50_shapes",
    "sweep_shapes",
    "traffic_bytes",
]

PASSES = ("fwd", "bwd", "fwd_bwd")
LAYOUTS = ("contiguous", "channels_last")


@dataclass(frozen=True, order=True)
class Shape:
    """Logical input shape ``(N, C, *spatial)``; ``dim`` is the tensor rank (2 for (N, C), 4 for images)."""

    N: int
    C: int
    spatial: tuple[int, ...] = ()

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.N, self.C, *self.spatial)

    @property
    def dim(self) -> int:
        return 2 + len(self.spatial)

    @property
    def numel(self) -> int:
        return math.prod(self.dims)

    @property
    def spatial_str(self) -> str:
        """``"56x56"``; empty for (N, C) inputs."""
        return "x".join(str(s) for s in self.spatial)

    def supports(self, layout: str) -> bool:
        """channels_last exists for 4d (``channels_last``) and 5d (``channels_last_3d``) tensors only."""
        return layout == "contiguous" or (layout == "channels_last" and self.dim in (4, 5))

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.dims)


def _dedup(shapes: Iterable[Shape]) -> list[Shape]:
    return list(dict.fromkeys(shapes))


# ResNet-50 (torchvision, "v1.5": the stride-2 of a stage sits in the 3x3 conv of its first bottleneck) at
# 224x224. Every BatchNorm2d as (channels, feature-map side):
#   stem   bn1                      64 @ 112
#   layer1 (3 blocks, 56x56)        64, 64, 256 (+ downsample 256)               @ 56
#   layer2 (4 blocks, 28x28)        first bn1 sees the 56x56 input: 128 @ 56; then 128, 512 @ 28
#   layer3 (6 blocks, 14x14)        first bn1: 256 @ 28; then 256, 1024 @ 14
#   layer4 (3 blocks, 7x7)          first bn1: 512 @ 14; then 512, 2048 @ 7
RESNET50_BN_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 112),
    (64, 56),
    (256, 56),
    (128, 56),
    (128, 28),
    (512, 28),
    (256, 28),
    (256, 14),
    (1024, 14),
    (512, 14),
    (512, 7),
    (2048, 7),
)
RESNET50_BATCHES = (32, 64, 256)


def resnet50_shapes(batches: Iterable[int] = RESNET50_BATCHES) -> list[Shape]:
    """Every distinct BatchNorm2d input of a ResNet-50 at 224x224 for each batch size."""
    return _dedup(Shape(n, c, (hw, hw)) for n in batches for c, hw in RESNET50_BN_LAYERS)


def unet3d_shapes() -> list[Shape]:
    """BatchNorm3d inputs of a 3D U-Net encoder/decoder (batch 2, 32 base channels at 128³ or 64³ input)."""
    return _dedup(
        [
            Shape(2, 32, (128, 128, 128)),
            Shape(2, 32, (64, 64, 64)),
            Shape(2, 64, (32, 32, 32)),
            Shape(2, 128, (16, 16, 16)),
            Shape(2, 256, (8, 8, 8)),
            Shape(4, 320, (4, 4, 4)),
        ]
    )


def mlp1d_shapes() -> list[Shape]:
    """BatchNorm1d on (N, C): large N with few channels, and the reverse (small batch, wide layer)."""
    return _dedup(
        [
            Shape(1 << 20, 16),
            Shape(1 << 18, 64),
            Shape(1 << 16, 256),
            Shape(4096, 1024),
            Shape(256, 8192),
            Shape(32, 1 << 16),
            Shape(8, 1 << 18),
        ]
    )


SWEEP_CHANNELS = (8, 64, 512)


def sweep_shapes(
    log2_min: int = 12, log2_max: int = 28, step: int = 2, channels: Iterable[int] = SWEEP_CHANNELS
) -> list[Shape]:
    """(N, C, H, W) with numel = 2^k for k in [log2_min, log2_max] (every ``step``), at each C (a power of
    two): N = min(32, numel / C), the rest split into H ≥ W powers of two."""
    shapes = []
    for c in channels:
        log2_c = int(math.log2(c))
        if 1 << log2_c != c:
            raise ValueError(f"sweep channels must be powers of two, got {c}")
        for k in range(log2_min, log2_max + 1, step):
            rest = k - log2_c
            if rest < 0:
                continue
            log2_n = min(5, rest)
            hw = rest - log2_n
            h, w = 1 << ((hw + 1) // 2), 1 << (hw // 2)
            shapes.append(Shape(1 << log2_n, c, (h, w)))
    return _dedup(shapes)


def quick_shapes() -> list[Shape]:
    """A handful covering 2d/3d/4d/5d, small and large, for smoke runs."""
    return [
        Shape(32, 64, (56, 56)),
        Shape(64, 2048, (7, 7)),
        Shape(8, 256, (14, 14)),
        Shape(4096, 512),
        Shape(16, 128, (1024,)),
        Shape(2, 32, (32, 32, 32)),
    ]


SUITES: dict[str, Callable[[], list[Shape]]] = {
    "quick": quick_shapes,
    "resnet50": resnet50_shapes,
    "unet3d": unet3d_shapes,
    "mlp1d": mlp1d_shapes,
    "sweep": sweep_shapes,
}


def get_suite(name: str) -> list[Shape]:
    try:
        return SUITES[name]()
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}") from None


def traffic_bytes(
    pass_: str, numel: int, C: int, elt_size: int, param_elt_size: int, affine: bool, *, training: bool = True
) -> int:
    """Minimum DRAM traffic (bytes) of one batch-norm pass; the GB/s of a measurement is this over its time.

    Element terms (each element of a numel-sized tensor read or written once, ``elt_size`` bytes):

    - ``fwd``: read x, write y                                  → 2·numel·elt
    - ``bwd``: read x and dy, write dx                          → 3·numel·elt
    - ``fwd_bwd``: the two above                                → 5·numel·elt

    O(C) terms (``param_elt_size`` bytes each, the dtype of weight/bias/running stats):

    - forward: read weight and bias (affine: 2·C); training: read and write running mean and var and write
      the saved mean and invstd (6·C); eval: read running mean and var (2·C);
    - backward: read the saved (or running) statistics (2·C); affine: read weight, write dweight and
      dbias (3·C).

    The eval backward of a layer without weight does not need x (dx = dy·invstd); the model still counts
    it, so the numbers of all configurations are on one scale.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    fwd_c = (2 * C if affine else 0) + (6 * C if training else 2 * C)
    bwd_c = 2 * C + (3 * C if affine else 0)
    elements = {"fwd": 2, "bwd": 3, "fwd_bwd": 5}[pass_]
    per_channel = {"fwd": fwd_c, "bwd": bwd_c, "fwd_bwd": fwd_c + bwd_c}[pass_]
    return elements * numel * elt_size + per_channel * param_elt_size


#: Passes over the activation (T: numel elements of the input's dtype read or written once) of each
#: implementation whose kernels are known, per (mode, pass): tritonbn by its launch plan (one tile per channel
#: block, or many tiles: README, "How it works"), PyTorch's native CUDA kernels as their source structures
#: them (a statistics or reduction kernel, then an elementwise one). cuDNN picks its kernels at run time and
#: inductor generates them: not modelled.
OWN_PASSES: dict[str, dict[tuple[str, str], tuple[int, int]]] = {
    # (mode, pass): (passes with one tile per channel block, passes with many tiles)
    "tritonbn": {
        ("train", "fwd"): (2, 3),  # read x, write y; many tiles: x read again to normalise
        ("train", "bwd"): (3, 5),  # read dy and x, write dx; many tiles: dy and x read again for dx
        ("eval", "fwd"): (2, 2),
        ("eval", "bwd"): (3, 3),  # constant statistics: dx written by the reduction pass (2 without affine:
    },  # no dweight, dbias to reduce: read dy, write dx)
    "native": {("train", "fwd"): (3, 3), ("train", "bwd"): (5, 5), ("eval", "fwd"): (2, 2)},
}


def own_traffic_bytes(
    provider: str,
    pass_: str,
    numel: int,
    C: int,
    elt_size: int,
    param_elt_size: int,
    affine: bool,
    *,
    training: bool = True,
    one_tile: bool | None = False,
) -> int | None:
    """DRAM traffic (bytes) of one pass as the implementation's own kernels move it: :data:`OWN_PASSES` passes
    over the activation plus the O(C) terms of :func:`traffic_bytes` (partials exchanged between a pass's
    programs, O(C) per program, are left out). ``one_tile``: tritonbn ran one program per channel block
    (:func:`tritonbn.launch.one_tile`; None: not known). None for an implementation or pass not modelled
    (cuDNN, inductor), or tritonbn's training passes when ``one_tile`` is None.

    The GB/s at this traffic over the copy bandwidth says how close the kernels run to the memory system's
    limit for what they read and write; at :func:`traffic_bytes` it says how close the pass is to the
    minimum any implementation needs. Raises ValueError for an unknown pass.
    """
    per_channel = traffic_bytes(pass_, 0, C, elt_size, param_elt_size, affine, training=training)  # checks pass_
    mode = "train" if training else "eval"
    table = OWN_PASSES.get(provider)
    if table is None:
        return None
    parts = ("fwd", "bwd") if pass_ == "fwd_bwd" else (pass_,)
    if any((mode, p) not in table for p in parts):
        return None
    if provider == "tritonbn" and one_tile is None and training:
        return None  # the path is not known
    passes = sum(table[(mode, p)][0 if one_tile else 1] for p in parts)
    if provider == "tritonbn" and mode == "eval" and not affine and "bwd" in parts:
        passes -= 1  # without dweight and dbias the eval backward is dx = dy·invstd alone
    return passes * numel * elt_size + per_channel
