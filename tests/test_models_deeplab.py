"""Dilated ResNet-50, torchvision-format weight loading, and MTAN-DeepLabv3."""

from __future__ import annotations

import pytest
import torch

from densemtl.errors import UserError
from densemtl.models import create_model
from densemtl.models.backbones.resnet import DilatedResNet50, load_torchvision_resnet50
from densemtl.models.info import count_params

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}


def torchvision_resnet50_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision ``resnet50``'s key names and shapes, written out from
    torchvision's layout (not from our module): stem, 3/4/6/3 bottlenecks, projection shortcut in
    every stage's first block, ``fc`` classifier."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(key, out, inp, k):
        state[f"{key}.weight"] = torch.randn(out, inp, k, k, generator=g)

    def bn(key, c):
        state[f"{key}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{key}.bias"] = torch.randn(c, generator=g)
        state[f"{key}.running_mean"] = torch.randn(c, generator=g)
        state[f"{key}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{key}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            key = f"layer{layer}.{b}"
            conv(f"{key}.conv1", planes, inplanes, 1)
            bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            conv(f"{key}.conv3", 4 * planes, planes, 1)
            bn(f"{key}.bn3", 4 * planes)
            if b == 0:
                conv(f"{key}.downsample.0", 4 * planes, inplanes, 1)
                bn(f"{key}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    state = torchvision_resnet50_state()
    # torchvision's resnet50 has 25,557,032 parameters (fc: 2048 x 1000 + 1000) and 320 tensors
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                       "num_batches_tracked"))) == 25_557_032
    assert len(state) == 320
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_trunk_size_equals_torchvision_without_the_classifier():
    with torch.device("meta"):
        assert count_params(DilatedResNet50()) == 25_557_032 - (2048 * 1000 + 1000)


def test_output_stride_8_with_dilation():
    trunk = DilatedResNet50(width=0.125).eval()
    x = torch.rand(1, 3, 64, 96)
    assert trunk(x).shape == (1, 256, 8, 12)  # 2048 x 0.125 channels, 1/8 resolution
    assert trunk.layer2[0].conv2.stride == (2, 2) and trunk.layer2[0].downsample[0].stride == (2, 2)
    for layer, first, rest in ((trunk.layer3, 1, 2), (trunk.layer4, 2, 4)):
        assert layer[0].conv2.stride == (1, 1) and layer[0].downsample[0].stride == (1, 1)
        assert layer[0].conv2.dilation == (first, first)
        assert all(block.conv2.dilation == (rest, rest) for block in layer[1:])


def test_loading_torchvision_weights_maps_every_tensor(tv_file):
    path, state = tv_file
    trunk = DilatedResNet50()
    assert load_torchvision_resnet50(trunk, path) == 320 - 2  # all but fc.weight / fc.bias
    own = trunk.state_dict()
    assert set(own) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_pretrained_option_reaches_the_backbone(tv_file, tmp_path):
    path, state = tv_file
    with torch.device("meta"):  # the heads stay shapes only: full width would allocate ~370 MB
        model = create_model("mtan_deeplab", NYUV2, pretrained=str(path))
    assert torch.equal(model.backbone.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    with pytest.raises(UserError, match="shape mismatch.*width 1"):
        create_model("mtan_deeplab", NYUV2, width=0.125, pretrained=str(path))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("layer3.5.bn2.running_var"), "missing 1 tensor"),
    (lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)), "1 unexpected tensor"),
    (lambda s: s.__setitem__("conv1.weight", torch.zeros(64, 3, 3, 3)), "shape mismatch"),
])
def test_bad_weight_files_are_user_errors(tv_file, tmp_path, edit, message):
    _, state = tv_file
    state = dict(state)
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with torch.device("meta"):  # the checks run before any tensor is copied
        trunk = DilatedResNet50()
    with pytest.raises(UserError, match=message):
        load_torchvision_resnet50(trunk, path)


def test_missing_or_corrupt_weight_file(tmp_path):
    trunk = DilatedResNet50(width=0.125)
    with pytest.raises(UserError, match="not a file"):
        load_torchvision_resnet50(trunk, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_torchvision_resnet50(trunk, corrupt)


def test_mtan_deeplab_size_by_hand():
    def conv(i, o, k=1, bias=False):
        return i * o * k * k + (o if bias else 0)

    def bottleneck(i, p, proj):
        return conv(i, p) + conv(p, p, 3) + conv(p, 4 * p) + 2 * (2 * p + 4 * p) + \
            (conv(i, 4 * p) + 2 * 4 * p if proj else 0)

    def mask(i, c):  # 1x1 conv (bias) + BN, twice: i -> c/4 -> c
        return conv(i, c // 4, bias=True) + 2 * (c // 4) + conv(c // 4, c, bias=True) + 2 * c

    def head(out):  # ASPP (5 branches, projection), 3x3 conv-BN, 1x1 conv with bias
        aspp = conv(2048, 256) * 2 + conv(2048, 256, 3) * 3 + 5 * 512 + conv(1280, 256) + 512
        return aspp + conv(256, 256, 3) + 512 + conv(256, out, bias=True)

    trunk = 25_557_032 - 2_049_000
    masks = mask(256, 256) + mask(1024, 512) + mask(2048, 1024) + mask(4096, 2048)
    shared = bottleneck(256, 128, True) + bottleneck(512, 256, True) + bottleneck(1024, 512, True)
    expected = trunk + 3 * masks + shared + head(13) + head(1) + head(3)
    with torch.device("meta"):
        assert count_params(create_model("mtan_deeplab", NYUV2)) == expected


def test_mtan_deeplab_masks_gate_each_stage_output():
    torch.manual_seed(0)
    model = create_model("mtan_deeplab", {"semantic": 5, "depth": 1}, width=0.125).eval()
    x = torch.rand(1, 3, 64, 64)
    reference = model(x)
    assert reference["semantic"].shape == (1, 5, 64, 64)
    with torch.no_grad():  # a depth mask of exactly zero at stage 4 silences depth's features
        model.encoder_attention[3][1].layers[4].weight.zero_()
        model.encoder_attention[3][1].layers[4].bias.fill_(-1e4)
    out = model(x)
    assert torch.allclose(out["semantic"], reference["semantic"])
    head = model.heads["depth"]
    silent = head(torch.zeros(1, 256, 8, 8))
    assert torch.allclose(out["depth"], torch.nn.functional.interpolate(silent, size=(64, 64), mode="bilinear",
                                                                        align_corners=True), atol=1e-6)
