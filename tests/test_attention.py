"""Attention building blocks: CAM, window self-attention, FPMA/feature propagation, CTAM, CSAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from densemtl.models.attention import (CAM, CTAM, FPMA, CrossScaleHead, SwinBlock, TaskGatedPropagation,
                                       WindowSelfAttention, heads_for, record_attention)


def _randomize_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics so eval-mode tests exercise them."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


# ------------------------------------------------------------------------------------------ CAM

def test_cam_equals_naive_quadratic_attention_across_resolutions():
    torch.manual_seed(0)
    cam = CAM(target_channels=5, source_channels=7, channels=4)
    _randomize_bn(cam)
    cam.eval()
    target, source = torch.randn(2, 5, 6, 5), torch.randn(2, 7, 3, 4)
    with record_attention(cam) as attn, torch.no_grad():
        out = cam(target, source)
        q = cam.query(target).flatten(2).numpy()  # N x D x 30
        k = cam.key(source).flatten(2).numpy()  # N x D x 12
        v = cam.value(source).flatten(2).numpy()  # N x C x 12
    # explicit 30 x 12 attention matrix: w_ij = k_j.q_i / sum_j k_j.q_i
    scores = np.einsum("ndi,ndj->nij", q, k)
    w = scores / scores.sum(axis=2, keepdims=True)
    expected = np.einsum("nij,ncj->nci", w, v).reshape(2, 4, 6, 5)
    assert out.shape == (2, 4, 6, 5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-6)
    # recorded map: attention each source position receives, averaged over target positions
    np.testing.assert_allclose(attn["received"].numpy(), w.mean(axis=1).reshape(2, 1, 3, 4), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(attn["received"].sum(dim=(2, 3)).numpy(), 1.0, rtol=1e-5)



def test_cam_sums_stay_in_float32_under_autocast():
    torch.manual_seed(0)
    cam = CAM(4, 4, 4).eval()
    target, source = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8) * 50
    with torch.no_grad():
        reference = cam(target, source)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = cam(target, source)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0.05, atol=0.05)

# ---------------------------------------------------------------------------- window attention

def _naive_window_block(block: SwinBlock, x: torch.Tensor) -> np.ndarray:
    """Reference for one block on N x H x W x C by explicit loops over all position pairs.

    Positions (i, j) and (i', j') attend to each other iff they fall in the same window of the
    partition displaced by ``shift``: row groups (i + window - shift) // window, same for columns.
    Only real positions exist here, which is what masking the padding must reproduce.
    """
    n, h, w, c = x.shape
    heads, win, s = block.heads, block.window, block.shift
    with torch.no_grad():
        y = block.norm1(x)
        qkv = block.qkv(y).numpy().reshape(n, h * w, 3, heads, c // heads)
        table = block.relative_position_bias.numpy()
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # N x P x heads x d
    rows, cols = np.divmod(np.arange(h * w), w)
    same = ((rows[:, None] + win - s) // win == (rows[None, :] + win - s) // win) & \
           ((cols[:, None] + win - s) // win == (cols[None, :] + win - s) // win)
    dy = rows[:, None] - rows[None, :] + win - 1
    dx = cols[:, None] - cols[None, :] + win - 1
    bias = table[np.where(same, dy * (2 * win - 1) + dx, 0)]  # P x P x heads (masked pairs: any entry)
    logits = np.einsum("nphd,nqhd->nhpq", q, k) * block.scale + bias.transpose(2, 0, 1)[None]
    logits = np.where(same[None, None], logits, -np.inf)
    a = np.exp(logits - logits.max(axis=-1, keepdims=True))
    a /= a.sum(axis=-1, keepdims=True)
    attended = np.einsum("nhpq,nqhd->nphd", a, v).reshape(n, h * w, c)
    with torch.no_grad():
        projected = block.proj(torch.from_numpy(attended)).numpy()
    return x.numpy() + projected.reshape(n, h, w, c)


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("size", [(9, 10), (7, 14), (3, 5)])
def test_window_block_matches_naive_reference_with_padding_and_shift(shift, size):
    torch.manual_seed(1)
    block = SwinBlock(dim=6, heads=2, window=7, shift=shift)
    with torch.no_grad():
        block.relative_position_bias.normal_()
    x = torch.randn(2, *size, 6)
    with torch.no_grad():
        out = block(x)
    np.testing.assert_allclose(out.numpy(), _naive_window_block(block, x), rtol=1e-4, atol=1e-5)


def test_window_self_attention_shapes_heads_mlp_and_recording():
    assert heads_for(36, 6) == 6 and heads_for(9, 6) == 3 and heads_for(7, 4) == 1
    wsa = WindowSelfAttention(12, heads=6, depth=2)
    assert [b.shift for b in wsa.blocks] == [0, 3]
    assert wsa.blocks[0].mlp is None
    x = torch.randn(2, 12, 5, 9)  # not a multiple of the window
    with record_attention(wsa) as attn:
        y = wsa(x)
    assert y.shape == x.shape
    assert set(attn) == {"blocks.0.received", "blocks.1.received"}
    assert attn["blocks.1.received"].shape == (2, 1, 5, 9)
    with_mlp = WindowSelfAttention(12, heads=6, depth=2, mlp_ratio=4.0)
    extra = sum(p.numel() for p in with_mlp.parameters()) - sum(p.numel() for p in wsa.parameters())
    assert extra == 2 * (2 * 12 + (12 * 48 + 48) + (48 * 12 + 12))  # per block: LayerNorm + 2 linears
    y.sum().backward()
    assert wsa.blocks[1].relative_position_bias.grad.abs().sum() > 0


# ------------------------------------------------------------------------ feature propagation

def test_propagation_softmax_is_per_channel_across_tasks():
    names = ["a", "b", "c"]
    module = TaskGatedPropagation(names, channels=4, mixer=nn.Identity())  # logits = the features
    module.eval()
    captured = {}
    module.reduce.register_forward_hook(lambda m, inp, out: captured.update(x=inp[0]))
    rng = np.random.default_rng(0)
    feats = {t: rng.normal(size=(2, 4, 3, 3)).astype(np.float32) for t in names}
    with torch.no_grad():
        module({t: torch.from_numpy(f) for t, f in feats.items()})
    stacked = np.stack([feats[t] for t in names], axis=1)  # N x T x C x H x W
    weights = np.exp(stacked) / np.exp(stacked).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(captured["x"].numpy(), (weights * stacked).reshape(2, 12, 3, 3), rtol=1e-5, atol=1e-6)


def test_fpma_task_weights_sum_to_one_and_shapes():
    names = ["semantic", "depth"]
    fpma = FPMA(names, channels=6, heads=4)
    assert fpma.mixer.blocks[0].heads == 4 and len(fpma.mixer.blocks) == 1
    feats = {t: torch.randn(2, 6, 5, 8) for t in names}
    with record_attention(fpma) as attn:
        out = fpma(feats)
    assert {t: o.shape for t, o in out.items()} == {t: (2, 6, 5, 8) for t in names}
    assert set(attn) == {"weight_semantic", "weight_depth", "mixer.blocks.0.received"}
    assert attn["weight_depth"].shape == (2, 1, 5, 8)
    torch.testing.assert_close(attn["weight_semantic"] + attn["weight_depth"], torch.ones(2, 1, 5, 8))


# ------------------------------------------------------------------------------------- CTAM

def test_ctam_parameter_count_shapes_and_single_task():
    c = 4
    ctam = CTAM(["a", "b", "c"], c)
    cam_params = 5 * c * c + 10 * c  # q, k: 2 x (1x1 conv + BN); v: 1x1 conv + BN
    reduce_params = 2 * 2 * c * c * 9 + c * c * 9 + 2 * 2 * c * c + 3 * 2 * c  # 3x3, 3x3, 1x1 proj; 3 BN
    assert sum(p.numel() for p in ctam.parameters()) == 6 * cam_params + reduce_params
    feats = {t: torch.randn(2, c, 5, 6) for t in "abc"}
    out = ctam(feats)
    assert all(out[t].shape == (2, c, 5, 6) for t in "abc")
    sum(o.sum() for o in out.values()).backward()
    assert ctam.attend["a"]["c"].query[0][0].weight.grad is not None
    single = CTAM(["a"], c)
    assert sum(p.numel() for p in single.parameters()) == 0
    assert torch.equal(single({"a": feats["a"]})["a"], feats["a"])


# ------------------------------------------------------------------------------------- CSAM

def test_cross_scale_head_fused_width_and_recording():
    head = CrossScaleHead([36, 72, 144, 288], 5)
    assert head.fuse[0].in_channels == 1080  # 3 x 72 + 2 x 144 + 288 + 288, as the official head
    small = CrossScaleHead([4, 8, 12, 16], 3)
    feats = [torch.randn(2, c, 16 // 2 ** i, 16 // 2 ** i) for i, c in enumerate([4, 8, 12, 16])]
    with record_attention(small) as attn:
        out = small(feats)
    assert out.shape == (2, 3, 16, 16)
    assert set(attn) == {"attend.0.from_scale1", "attend.0.from_scale2", "attend.0.from_scale3",
                         "attend.1.from_scale2", "attend.1.from_scale3", "attend.2.from_scale3"}
    assert attn["attend.0.from_scale3"].shape == (2, 1, 2, 2)  # over the coarser (source) positions


# ------------------------------------------------------------------------------ pictures

def test_save_attention_pictures_draws_each_map_over_the_image(tmp_path):
    from PIL import Image

    from densemtl.attention_viz import save_attention_pictures

    hot = torch.zeros(1, 1, 4, 4)
    hot[..., :2, :2] = 1.0  # attention on the top-left quarter
    two = torch.rand(2, 2, 3, 5)  # K = 2 maps: two panels; only the first sample is drawn
    image = torch.full((3, 32, 48), 0.5)
    paths = save_attention_pictures({"ctam.semantic<-depth.received": hot, "fpma.w": two}, image, tmp_path,
                                    prefix="img_attention")
    assert [p.name for p in paths] == ["img_attention_000_ctam.semantic_-depth.received.png",
                                       "img_attention_001_fpma.w.png"]
    rgb = np.asarray(Image.open(paths[0]).convert("RGB")).astype(int)
    # heat-map pixels (inferno's top end over grey): reddish-yellow; cold ones (its bottom): dark
    warm = (rgb[..., 0] > 180) & (rgb[..., 2] < 170)
    cold = rgb.sum(axis=2) < 200
    ys, xs = np.nonzero(cold | warm)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    wy, wx = np.nonzero(warm)
    assert warm.sum() > 50
    assert wy.mean() < (top + bottom) / 2 and wx.mean() < (left + right) / 2
    wide = np.asarray(Image.open(paths[1]))
    assert wide.shape[1] > rgb.shape[1]  # two panels side by side
    with pytest.raises(ValueError):
        save_attention_pictures({"bad": torch.zeros(4, 4)}, image, tmp_path)
