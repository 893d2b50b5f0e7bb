"""The correctness grid: shapes × dtypes × layouts × modes, plus the variants that stress the semantics."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from tritonbn.correctness.tolerances import DTYPES

__all__ = ["Case", "Inputs", "full_grid", "make_inputs", "quick_grid"]

MODES = ("train", "eval")
LAYOUTS = ("contiguous", "channels_last")
LARGE_MEAN = 1e4


@dataclass(frozen=True)
class Case:
    """One configuration. ``mode`` is train|eval; the variants are part of :attr:`name`:

    - ``detach``: training with ``detach_stats=True``;
    - ``noaffine``: no weight and bias;
    - ``nostats``: training without running statistics (``running_mean=running_var=None``);
    - ``large_mean``: channel 0 has mean 1e4 and std 1 (and running statistics to match in eval), where
      one-pass ``E[x²] - E[x]²`` statistics and low-precision accumulation lose all precision.
    """

    shape: tuple[int, ...]
    dtype: str
    layout: str = "contiguous"
    mode: str = "train"
    detach_stats: bool = False
    affine: bool = True
    running_stats: bool = True
    large_mean: bool = False
    momentum: float = 0.1
    eps: float = 1e-5

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be train or eval, got {self.mode!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}")
        if self.layout == "channels_last" and len(self.shape) not in (4, 5):
            raise ValueError("channels_last needs a 4d or 5d shape")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.mode == "eval" and (self.detach_stats or not self.running_stats):
            raise ValueError("eval mode uses the running statistics: no detach/nostats variant")

    @property
    def training(self) -> bool:
        return self.mode == "train"

    @property
    def name(self) -> str:
        """The CSV's ``case``: the shape, then the variants, e.g. ``2x3x5x4+detach``."""
        variants = [
            v
            for v, on in (
                ("detach", self.detach_stats),
                ("noaffine", not self.affine),
                ("nostats", not self.running_stats),
                ("large_mean", self.large_mean),
            )
            if on
        ]
        return "+".join(["x".join(map(str, self.shape)), *variants])

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def param_dtype(self) -> torch.dtype:
        """float32 parameters/buffers for half inputs (mixed precision, as under AMP), else the input's."""
        return torch.float32 if self.dtype in ("fp16", "bf16") else self.torch_dtype

    @property
    def seed(self) -> int:
        return zlib.crc32(f"{self.name}|{self.dtype}|{self.layout}|{self.mode}".encode())


@dataclass
class Inputs:
    x: torch.Tensor
    dy: torch.Tensor
    v: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return t.contiguous()
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def make_inputs(case: Case, device: torch.device | str) -> Inputs:
    """Deterministic inputs of a case (seeded by the case), rounded to its dtype, in its layout."""
    gen = torch.Generator().manual_seed(case.seed)
    C = case.shape[1]
    bshape = [1, C] + [1] * (len(case.shape) - 2)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    scale = torch.rand(C, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    shift = torch.rand(C, generator=gen, dtype=torch.float64) * 2 - 1
    if case.large_mean:
        scale[0], shift[0] = 1.0, LARGE_MEAN
    x = randn(*case.shape) * scale.reshape(bshape) + shift.reshape(bshape)
    dy, v = randn(*case.shape), randn(*case.shape)
    pd = case.param_dtype
    weight = bias = rm = rv = None
    if case.affine:
        weight = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(pd)
        bias = randn(C).to(pd)
    if case.running_stats:
        rm = (shift + 0.1 * randn(C)).to(pd)
        rv = (scale * scale * (torch.rand(C, generator=gen, dtype=torch.float64) * 0.5 + 0.75)).to(pd)
    dt = case.torch_dtype

    def prep(t):
        return _layout(t.to(dt), case.layout).to(device)

    return Inputs(
        x=prep(x),
        dy=prep(dy),
        v=prep(v),
        weight=None if weight is None else weight.to(device),
        bias=None if bias is None else bias.to(device),
        running_mean=None if rm is None else rm.to(device),
        running_var=None if rv is None else rv.to(device),
    )


def _grid(
    shapes: Sequence[tuple[int, ...]],
    dtypes: Iterable[str],
    layouts: Iterable[str],
    variant_shape: tuple[int, ...],
    large_mean_shape: tuple[int, ...],
) -> list[Case]:
    dtypes, layouts = list(dtypes), list(layouts)
    cases = []
    for dtype in dtypes:
        for shape in shapes:
            for layout in layouts:
                if layout == "channels_last" and len(shape) not in (4, 5):
                    continue
                cases.append(Case(shape, dtype, layout, "train"))
                cases.append(Case(shape, dtype, layout, "train", detach_stats=True))
                cases.append(Case(shape, dtype, layout, "eval"))
        cases.append(Case(variant_shape, dtype, "contiguous", "train", affine=False))
        cases.append(Case(variant_shape, dtype, "contiguous", "eval", affine=False))
        cases.append(Case(variant_shape, dtype, "contiguous", "train", running_stats=False))
        for mode in MODES:
            cases.append(Case(large_mean_shape, dtype, "contiguous", mode, large_mean=True))
    return cases


QUICK_SHAPES = ((3, 5), (5, 1, 6), (2, 3, 5, 4), (2, 2, 3, 4, 3))
FULL_SHAPES = (
    (97, 33),
    (4096, 3),
    (3, 1, 31),
    (16, 7, 129),
    (8, 19, 17, 13),
    (4, 64, 28, 28),
    (32, 256, 7, 7),
    (2, 5, 7, 9, 11),
    (2, 16, 8, 16, 16),
)


def quick_grid(dtypes: Iterable[str] = tuple(DTYPES), layouts: Iterable[str] = LAYOUTS) -> list[Case]:
    """Tiny shapes (odd sizes, C=1, 2d to 5d) that the Triton interpreter runs in well under a minute."""
    return _grid(QUICK_SHAPES, dtypes, layouts, variant_shape=(4, 3, 7), large_mean_shape=(6, 2, 5, 3))


def full_grid(dtypes: Iterable[str] = tuple(DTYPES), layouts: Iterable[str] = LAYOUTS) -> list[Case]:
    """Realistic and odd shapes, for a GPU."""
    return _grid(FULL_SHAPES, dtypes, layouts, variant_shape=(64, 12, 33), large_mean_shape=(32, 4, 17, 19))
