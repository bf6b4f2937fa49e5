"""The Haar DWT: plain torch, the fused operator and the Triton kernels against pytorch_wavelets."""
import pytest
import torch

from engine.bench.references import ReferenceDWT
from engine.kernels import haar_dwt, haar_dwt_backward_torch, haar_dwt_torch
from engine.kernels.haar_triton import (FAMILIES, ROW_CONFIGS, TILE_CONFIGS, _block_q, _block_x,
                                        _spans_wide_offsets, configs_for, haar_dwt_backward_triton, haar_dwt_triton)

SHAPES = [(2, 3, 8, 8), (1, 5, 16, 24), (3, 2, 32, 16)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def weighted_sum(outputs, weights):
    return sum((output * weight).sum() for output, weight in zip(outputs, weights))


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("implementation", [haar_dwt_torch, haar_dwt], ids=["plain", "operator"])
def test_dwt_equals_pytorch_wavelets_values_and_gradients(implementation, shape, levels):
    if min(shape[-2:]) % 2 ** levels:
        pytest.skip("size not divisible")
    generator = torch.Generator().manual_seed(hash((shape, levels)) % 2**31)
    x = torch.randn(shape, generator=generator)
    reference = ReferenceDWT(levels)
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, expected = implementation(x_ours, levels), reference(x_ref)
    assert len(ours) == levels
    for level, (mine, theirs) in enumerate(zip(ours, expected), start=1):
        assert mine.shape == (shape[0], 4 * shape[1], shape[2] >> level, shape[3] >> level)
        assert relative_error(mine, theirs) < 1e-6
    weights = [torch.randn(o.shape, generator=generator) for o in expected]
    weighted_sum(ours, weights).backward()
    weighted_sum(expected, weights).backward()
    assert relative_error(x_ours.grad, x_ref.grad) < 1e-6


def test_gradcheck_in_float64():
    x = torch.randn(2, 3, 8, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tuple(haar_dwt_torch(t, 3)), (x,))
    assert torch.autograd.gradcheck(lambda t: tuple(haar_dwt(t, 3)), (x,))  # the operator's registered backward


def test_operator_passes_torch_library_checks():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.engine.haar_dwt.default, (x, 3))
    grads = [torch.randn(2, 12, 8 >> level, 8 >> level) for level in (1, 2, 3)]
    torch.library.opcheck(torch.ops.engine.haar_dwt_backward.default, (grads, False))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_operator_keeps_the_memory_format(channels_last):
    x = torch.randn(2, 4, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    outputs = haar_dwt(x, 3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert all(output.is_contiguous(memory_format=fmt) for output in outputs)
    weighted_sum(outputs, [torch.ones_like(o) for o in outputs]).backward()
    assert x.grad.is_contiguous(memory_format=fmt)


def test_odd_sizes_are_refused_with_the_rule():
    with pytest.raises(ValueError, match=r"divisible by 2\^3 = 8, got 12x16"):
        haar_dwt(torch.randn(1, 1, 12, 16), 3)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_triton_kernels_match_plain_torch(levels, channels_last, dtype, tolerance):
    """Under TRITON_INTERPRET=1 (tests/conftest.py) the kernels run on CPU tensors."""
    x = torch.randn(3, 5, 32, 48).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = haar_dwt_torch(x.float(), levels)
    actual = haar_dwt_triton(x, levels)
    for mine, theirs in zip(actual, expected):
        assert mine.dtype == dtype
        assert relative_error(mine, theirs) < tolerance
    # Gradients as autograd hands them over: views with arbitrary strides (here, slices of a wider tensor).
    grads = [torch.randn(o.shape[0], o.shape[1] + 6, *o.shape[2:]).to(dtype)[:, 3:-3] for o in expected]
    expected_grad = haar_dwt_backward_torch([g.float() for g in grads])
    actual_grad = haar_dwt_backward_triton(grads, channels_last)
    assert actual_grad.shape == x.shape and actual_grad.dtype == dtype
    assert actual_grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert relative_error(actual_grad, expected_grad) < tolerance


LAUNCHES = ([(True, config) for config in TILE_CONFIGS] + [(False, config) for config in ROW_CONFIGS]
            + [(True, {"TILE": 256, "GROUP": 4, "WIDE": True}),
               (False, {"TILE": 512, "GROUP": 2, "WIDE": True})])


@pytest.mark.parametrize("channels_last, config", LAUNCHES,
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) if isinstance(v, dict) else
                         ("channels_last" if v else "nchw"))
@pytest.mark.parametrize("shape", [(2, 48, 16, 16), (1, 3, 8, 24)], ids=["48ch", "3ch-wide"])
def test_every_launch_configuration_computes_the_same_transform(channels_last, config, shape):
    """The autotuner may pick any configuration of the layout's family on a GPU: each must give the same values
    and gradients. 48 channels as in WaveMix (channels_last tiles 16 channels wide: a program covers part of a
    pixel's channels); 3 channels and 24 columns (masked lanes; NCHW rows 32 wide for 24 columns)."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = haar_dwt_torch(x, 3)
    for mine, theirs in zip(haar_dwt_triton(x, 3, config), expected):
        assert relative_error(mine, theirs) < 1e-6
    grads = [torch.randn_like(o) for o in expected]
    grad = haar_dwt_backward_triton(grads, channels_last, config)
    assert relative_error(grad, haar_dwt_backward_torch(grads)) < 1e-6


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_the_autotuners_choice_never_changes_a_result(channels_last):
    """Configurations differ in tiling and memory movement, not in any element's arithmetic: every one gives
    bit for bit the same outputs and gradients, so runs on different GPUs (or DDP ranks) agree whatever is picked."""
    x = torch.randn(2, 48, 16, 16).to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    first, *others = configs_for(channels_last)
    outputs = haar_dwt_triton(x, 3, first)
    grads = [torch.randn_like(o) for o in outputs]
    grad = haar_dwt_backward_triton(grads, channels_last, first)
    for config in others:
        assert all(torch.equal(a, b) for a, b in zip(haar_dwt_triton(x, 3, config), outputs)), config
        assert torch.equal(haar_dwt_backward_triton(grads, channels_last, config), grad), config


def test_each_layout_has_its_kernel_family():
    assert configs_for(True) == TILE_CONFIGS and configs_for(False) == ROW_CONFIGS
    assert len(FAMILIES[torch.channels_last].tuned["forward"].configs) == len(TILE_CONFIGS)
    assert len(FAMILIES[torch.contiguous_format].tuned["backward"].configs) == len(ROW_CONFIGS)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
def test_autotuned_launch_hands_each_kernel_exactly_its_arguments(layout, monkeypatch):
    """On a GPU the autotuner adds a configuration's keys to what `_launch` passes: together they must be the
    kernel's parameters, and the grid must cover the tensor (checked here with the launch intercepted)."""
    launches = []

    class Intercepted:
        def __getitem__(self, grid):
            return lambda *arguments, **constants: launches.append((grid, arguments, constants))

    family = FAMILIES[layout]
    monkeypatch.setitem(family.tuned, "forward", Intercepted())
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: True))
    x = torch.randn(2, 48, 64, 64).contiguous(memory_format=layout)
    haar_dwt_triton(x, 3)
    (grid, arguments, constants), = launches
    names = family.forward.arg_names
    config_keys = {key for key in family.configs[0] if key != "num_warps"}
    assert list(names[:len(arguments)]) == [n for n in names if n not in constants and n not in config_keys]
    assert set(names[len(arguments):]) == set(constants) | config_keys
    sizes, rows, extent, block = family.geometry(x, 3)
    tile = family.configs[0]["TILE"]
    row_blocks, blocks = -(-rows // (tile // block)), -(-extent // block)
    # the tile tree on one axis, a row block's channel blocks side by side (they share pixels); rows on two
    assert grid({"TILE": tile}) == ((row_blocks * blocks,) if layout == torch.channels_last else (row_blocks, blocks))


def test_tiles_cover_the_contiguous_axis_without_masked_lanes_where_they_can():
    assert [_block_q(extent) for extent in (48, 64, 96, 192, 8, 3, 5, 20)] == [16, 64, 32, 64, 8, 4, 8, 32]
    assert [_block_x(width, 3) for width in (64, 24, 8, 512)] == [64, 32, 8, 128]


def test_offsets_past_two_to_the_31_switch_to_64_bit_arithmetic():
    assert not _spans_wide_offsets(torch.empty(128, 48, 256, 256, device="meta"))  # WaveMix at 1024 px: 2^28.6
    assert _spans_wide_offsets(torch.empty(512, 64, 256, 256, device="meta"))


def test_compiles_as_one_graph_with_the_operator():
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    compiled = torch.compile(lambda t: [o * 2 for o in haar_dwt(t, 3)], fullgraph=True, backend="aot_eager")
    outputs = compiled(x)
    for mine, theirs in zip(outputs, haar_dwt_torch(x.detach(), 3)):
        assert torch.allclose(mine, theirs * 2)
    weighted_sum(outputs, [torch.ones_like(o) for o in outputs]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_unused_levels_get_zero_gradient():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    haar_dwt(x, 3)[1].sum().backward()  # only level 2 is used
    x_plain = x.detach().clone().requires_grad_(True)
    haar_dwt_torch(x_plain, 3)[1].sum().backward()
    assert torch.allclose(x.grad, x_plain.grad, atol=1e-6)
