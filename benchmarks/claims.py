"""Reproduce the seed's two architectural claims from the code (numbers quoted in the README).

    python benchmarks/claims.py [--json]

1. SqueezeNet: ~1/50 of AlexNet's weights; a 1x1 filter has 9x fewer weights than a 3x3.
2. MobileNet: a depthwise separable layer costs 1/N + 1/9 of a full 3x3 convolution; the
   whole network with full convolutions (the paper's Table 4 "Conv MobileNet").
"""
from __future__ import annotations

import argparse
import json

from torch import nn

from pocketcnn import create_model, profile
from pocketcnn.models.layers import ConvBNAct
from pocketcnn.models.mobilenet_v1 import DepthwiseSeparable


def full_conv_mobilenet() -> nn.Module:
    """MobileNet v1 with every depthwise separable layer replaced by a full 3x3 conv-BN-ReLU."""
    m = create_model("mobilenet_v1")
    for i, block in enumerate(m.blocks):
        assert isinstance(block, DepthwiseSeparable)
        conv_dw = block.dw[0]
        m.blocks[i] = ConvBNAct(conv_dw.in_channels, block.pw[0].out_channels, 3, conv_dw.stride[0])
    return m


def main() -> dict:
    alex, sq10 = profile(create_model("alexnet")), profile(create_model("squeezenet1_0"))
    fire9 = {r.name: r for r in sq10.layers}
    e1, e3 = fire9["features.12.expand1x1"], fire9["features.12.expand3x3"]
    mb, full = profile(create_model("mobilenet_v1")), profile(full_conv_mobilenet(), name="mobilenet_v1_full_conv")
    rows = {r.name: r for r in mb.layers}
    dw, pw = rows["blocks.6.dw.0"], rows["blocks.6.pw.0"]  # 14x14x512 -> 512
    full_layer_macs = 3 * 3 * 512 * 512 * 14 * 14
    out = {
        "alexnet_params": alex.params, "squeezenet1_0_params": sq10.params,
        "alexnet_over_squeezenet_params": alex.params / sq10.params,
        "alexnet_mb": alex.size_mb, "squeezenet1_0_mb": sq10.size_mb,
        "fire9_expand1x1_weights_per_filter": (e1.params - 256) // 256,
        "fire9_expand3x3_weights_per_filter": (e3.params - 256) // 256,
        "layer_14x14x512_full_conv_macs": full_layer_macs,
        "layer_14x14x512_separable_macs": dw.macs + pw.macs,
        "layer_separable_cost_fraction": (dw.macs + pw.macs) / full_layer_macs,
        "formula_1_over_N_plus_1_over_9": 1 / 512 + 1 / 9,
        "mobilenet_v1_macs": mb.macs, "mobilenet_v1_params": mb.params,
        "full_conv_mobilenet_macs": full.macs, "full_conv_mobilenet_params": full.params,
    }
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    d = main()
    if ap.parse_args().json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:40s} {v:,.4f}" if isinstance(v, float) else f"{k:40s} {v:,}")
