"""SR generators (SRResNet, EDSR, WDSR-A/B, RCAN) and the SRGAN discriminator: shapes, ranges, checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import discriminator_class, generator_class, load_generator, save_generator
from pipeline.models.edsr import EDSR
from pipeline.models.rcan import RCAN, ChannelAttention
from pipeline.models.srresnet import SRGANDiscriminator, SRResNet
from pipeline.models.wdsr import WDSR

TINY = {"srresnet": {"num_feat": 8, "num_block": 2}, "edsr": {"num_feat": 8, "num_block": 2},
        "wdsr_a": {"kind": "A", "num_feat": 8, "num_block": 2},
        "wdsr_b": {"kind": "B", "num_feat": 8, "num_block": 2},
        "rcan": {"num_feat": 8, "num_group": 2, "num_block": 2, "reduction": 4}}
ARCH = {"srresnet": "srresnet", "edsr": "edsr", "wdsr_a": "wdsr", "wdsr_b": "wdsr", "rcan": "rcan"}


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("global_skip", [False, True])
def test_generators_upscale_4x(name, global_skip):
    torch.manual_seed(0)
    G = generator_class(ARCH[name])(**TINY[name], global_skip=global_skip).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y = G(x)
    assert y.shape == (2, 3, 256, 256) and torch.isfinite(y).all()
    with torch.no_grad():
        assert G(torch.rand(1, 3, 13, 7)).shape == (1, 3, 52, 28)  # any h, w
    if global_skip:  # the residual branch starts at (or, for WDSR's weight norm, near) zero
        bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        tol = 0.02 if ARCH[name] == "wdsr" else 1e-6  # WDSR: gains at 1 %, within a few 8-bit levels
        assert (y - bic).abs().max() <= tol
        if ARCH[name] == "wdsr":
            assert (y - bic).abs().max() > 0  # not exactly zero: the branch direction must learn


@pytest.mark.parametrize("cls,params", [(SRResNet, 1_550_000), (EDSR, 1_517_000), (WDSR, 1_203_000),
                                        (RCAN, 15_592_000)])
def test_paper_defaults_build_and_run(cls, params):
    """Default widths are the papers' (SRResNet 16x64 ~1.5M, EDSR baseline 16x64 ~1.5M, WDSR-A 16x32,
    RCAN 10 groups x 20 blocks x 64 ~15.6M)."""
    G = cls().eval()
    n = sum(p.numel() for p in G.parameters())
    assert abs(n - params) / params < 0.01, n
    with torch.no_grad():
        assert G(torch.rand(1, 3, 12, 16)).shape == (1, 3, 48, 64)


def test_wdsr_b_is_wide_and_low_rank():
    blk = WDSR(kind="B", num_feat=32, num_block=1).body[0].body
    assert [m.out_channels for m in blk if hasattr(m, "out_channels")] == [192, 25, 32]
    with pytest.raises(ValueError, match="'A' or 'B'"):
        WDSR(kind="C")


def test_rcan_channel_attention_weighs_channels_by_the_whole_input():
    """CA scales each channel by one factor in (0, 1) computed from its global mean: a change anywhere
    in the input changes the scaling everywhere (what a 3x3 residual block cannot do)."""
    torch.manual_seed(0)
    ca = ChannelAttention(8, reduction=4)
    x = torch.rand(1, 8, 16, 16)
    y = ca(x)
    factor = y / x
    assert torch.allclose(factor, factor[..., :1, :1].expand_as(factor), atol=1e-6)
    assert ((factor > 0) & (factor < 1)).all()
    x2 = x.clone()
    x2[..., 15, 15] += 5.0  # one far pixel
    assert not torch.allclose(ca(x2)[..., 0, 0], y[..., 0, 0])
    with pytest.raises(ValueError, match=">= 1"):
        RCAN(num_group=0)
    assert sum(isinstance(m, ChannelAttention) for m in RCAN(**TINY["rcan"]).modules()) == 4


def test_srgan_discriminator_shapes():
    D = discriminator_class("srgan")(num_feat=8, pool=4, fc=32)
    assert isinstance(D, SRGANDiscriminator)
    for size in (16, 64, 96):
        assert D(torch.rand(3, 3, size, size)).shape == (3, 1)
    with pytest.raises(ValueError, match="unconditional"):
        D(torch.rand(1, 6, 64, 64))
    assert SRGANDiscriminator()(torch.rand(1, 3, 96, 96)).shape == (1, 1)  # the paper's, at 96 px


def test_sr_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    kwargs = {**TINY["wdsr_b"], "global_skip": True, "scale": 4}
    G = WDSR(**kwargs)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_generator(tmp_path / "g.pt", G, arch="wdsr", arch_kwargs=kwargs, color_space="rgb", step=3,
                   card={"task": "superres", "scale": 4})
    H, meta = load_generator(tmp_path / "g.pt")
    assert meta["card"] == {"task": "superres", "scale": 4} and meta["color_space"] == "rgb"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(G.eval()(x), H(x)) and not H.training
