"""Which convolutions' backward the compiled training step hands tensors in the wrong layout, read without a GPU.

    python -m engine.bench.layouts                          # every backbone, 64 px, batch 2
    python -m engine.bench.layouts --backbones wavemix,shufflenet* --image-size 128

torch 2.11's inductor (the GPU machine's) runs each convolution's backward as ATen's own, handed its gradient,
saved input and weight in exactly the strides AOT autograd traced for them. cuDNN copies any of those that is not
in the convolution's layout (channels_last for an engine model) before it starts: a strided copy, inside ATen,
that no fusion can hide. Those strides do not depend on the device, so the backward graph traced here (the
training step under bf16 autocast, inductor's decompositions) names every such copy: WaveMix's residual stream
came out NCHW this way (10.4 ms of an H100's 92.9 ms step, bench/NOTES.md). Slices (a channel chunk, a
concatenation's part) are copied by cuDNN in eager too; they show as `slice`.
"""
from __future__ import annotations

import argparse
import json

import torch


def _layout(tensor: torch.Tensor) -> str:
    if tensor.dim() != 4 or tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if tensor.is_contiguous():
        return "nchw"
    return "other" if _dense(tensor) else "slice"


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the tensor fills its memory without gaps, in some order of its axes (a slice does not)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def convolution_backward_tensors(model: torch.nn.Module, images: torch.Tensor) -> list[dict]:
    """Per convolution in the backward graph of `model`'s training step on `images`: the fake tensors (the strides
    AOT autograd gives them) of its incoming gradient, its saved input (when it computes the weight's gradient)
    and its weight."""
    import torch._inductor.lowering  # noqa: F401  (inductor's decompositions look it up)
    from torch._dynamo.backends.common import aot_autograd
    from functorch.compile import make_boxed_func
    from torch._inductor.decomposition import select_decomp_table

    found = []

    def record_backward(graph, example_inputs):
        for node in graph.graph.nodes:
            if node.target is torch.ops.aten.convolution_backward.default:
                gradient, saved, weight = (argument.meta["val"] for argument in node.args[:3])
                found.append({"gradient": gradient, "input": saved if node.args[10][1] else None, "weight": weight})
        return make_boxed_func(graph)

    # Boxed: AOT autograd hands the compiled graphs one list of arguments, which it can free as they are used.
    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: make_boxed_func(graph),
                           bw_compiler=record_backward,
                           decompositions=select_decomp_table())
    torch._dynamo.reset()  # a model traced before would not be traced again
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        logits = torch.compile(model, backend=backend, fullgraph=True)(images)
    logits.float().sum().backward()
    return found


def misplaced(found: list[dict]) -> list[dict]:
    """The convolutions with a tensor not channels_last: which one, its shape and its layout (nchw; slice, a part of
    a larger tensor; other, dense in another order of the axes)."""
    rows = []
    for convolution in found:
        wrong = {role: f"{tuple(tensor.shape)} {_layout(tensor)}" for role, tensor in convolution.items()
                 if tensor is not None and _layout(tensor) != "channels_last"}
        if wrong:
            rows.append(wrong)
    return rows


def main(argv=None) -> list[dict]:
    from engine.grid import pick_names
    from engine.models import build_backbone, list_backbones

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all", help="comma-separated names or shell patterns, or all")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--show", type=int, default=6, help="convolutions listed per backbone")
    args = parser.parse_args(argv)
    summaries = []
    for name in pick_names(args.backbones, list_backbones(), "backbone"):
        torch.manual_seed(0)
        model = build_backbone(name, 10).to(memory_format=torch.channels_last)
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        found = convolution_backward_tensors(model, images.contiguous(memory_format=torch.channels_last))
        rows = misplaced(found)
        summaries.append({"backbone": name, "convolutions": len(found), "not_channels_last": len(rows),
                          "first": rows[:args.show]})
        print(json.dumps(summaries[-1]), flush=True)
    return summaries


if __name__ == "__main__":
    main()
