import math

import pytest

from tritonbn.bench.suites import (
    LAYOUTS,
    SUITES,
    Shape,
    get_suite,
    mlp1d_shapes,
    quick_shapes,
    resnet50_shapes,
    sweep_shapes,
    traffic_bytes,
    unet3d_shapes,
)


@pytest.mark.parametrize("name", list(SUITES))
def test_suites_are_deduplicated_and_well_formed(name):
    shapes = get_suite(name)
    assert shapes, name
    assert len(shapes) == len(set(shapes))
    for s in shapes:
        assert isinstance(s, Shape)
        assert s.N >= 1 and s.C >= 1 and all(d >= 1 for d in s.spatial)
        assert s.numel == math.prod(s.dims)


def test_resnet50_every_bn_layer_at_each_batch():
    shapes = resnet50_shapes()
    assert Shape(256, 64, (112, 112)) in shapes
    for n in (32, 64, 256):
        for c, hw in [(64, 112), (64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (2048, 7)]:
            assert Shape(n, c, (hw, hw)) in shapes
    # the stride sits in the 3x3 conv: the first bn1 of layers 2-4 sees the previous resolution
    assert Shape(32, 128, (56, 56)) in shapes and Shape(32, 512, (14, 14)) in shapes
    assert all(s.dim == 4 for s in shapes)
    assert len(shapes) == 36


def test_other_suites_dimensionality():
    assert all(s.dim == 5 for s in unet3d_shapes())
    mlp = mlp1d_shapes()
    assert all(s.dim == 2 for s in mlp)
    assert any(s.N >= 1 << 20 and s.C <= 16 for s in mlp) and any(s.N <= 32 and s.C >= 1 << 16 for s in mlp)
    assert {s.dim for s in quick_shapes()} == {2, 3, 4, 5}
    assert len(quick_shapes()) <= 8


def test_sweep_spans_2_12_to_2_28_in_powers_of_two():
    shapes = sweep_shapes()
    numels = {s.numel for s in shapes}
    assert min(numels) == 1 << 12 and max(numels) == 1 << 28
    assert all(n & (n - 1) == 0 for n in numels)
    assert {s.C for s in shapes} == {8, 64, 512}


def test_unknown_suite():
    with pytest.raises(ValueError, match="unknown suite"):
        get_suite("nope")


def test_layout_support():
    assert Shape(2, 3, (4, 5)).supports("channels_last")
    assert Shape(2, 3, (4, 5, 6)).supports("channels_last")
    assert not Shape(2, 3).supports("channels_last")
    assert not Shape(2, 3, (4,)).supports("channels_last")
    assert all(Shape(2, 3).supports("contiguous") for _ in LAYOUTS)
    assert Shape(2, 3, (4, 5)).spatial_str == "4x5" and Shape(2, 3).spatial_str == ""


def test_traffic_model_element_terms():
    numel, elt = 1 << 20, 2
    for pass_, k in (("fwd", 2), ("bwd", 3), ("fwd_bwd", 5)):
        # C = 0 isolates the element terms
        assert traffic_bytes(pass_, numel, 0, elt, 4, True) == k * numel * elt


def test_traffic_model_per_channel_terms():
    C, p = 10, 4
    assert traffic_bytes("fwd", 0, C, 2, p, True, training=True) == (2 + 6) * C * p
    assert traffic_bytes("fwd", 0, C, 2, p, False, training=True) == 6 * C * p
    assert traffic_bytes("fwd", 0, C, 2, p, True, training=False) == (2 + 2) * C * p
    assert traffic_bytes("bwd", 0, C, 2, p, True) == (2 + 3) * C * p
    assert traffic_bytes("bwd", 0, C, 2, p, False) == 2 * C * p
    assert traffic_bytes("fwd_bwd", 100, C, 2, p, True) == traffic_bytes("fwd", 100, C, 2, p, True) + traffic_bytes(
        "bwd", 100, C, 2, p, True
    )


def test_traffic_model_rejects_unknown_pass():
    with pytest.raises(ValueError):
        traffic_bytes("both", 1, 1, 4, 4, True)
