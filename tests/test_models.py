"""Generator and discriminator shapes/ranges, the ImageNet weights path (offline), checkpoints."""


import pytest
import torch

from pipeline.models import discriminator_class, generator_class, load_generator, out_channels, save_generator
from pipeline.models.patchgan import PatchGAN
from pipeline.models.resnet_unet import ResNet18UNet

RESNET18_FILE = "resnet18-f37072fd.pth"  # the name torchvision's IMAGENET1K_V1 caches under


@pytest.mark.parametrize("space", ["lab", "rgb"])
def test_generator_shapes_and_range(space):
    torch.manual_seed(0)
    G = ResNet18UNet(out_channels=out_channels(space)).eval()
    x = torch.rand(2, 1, 32, 64) * 2 - 1
    with torch.no_grad():
        y = G(x)
    assert y.shape == (2, out_channels(space), 32, 64)
    assert y.min() >= -1 and y.max() <= 1 and torch.isfinite(y).all()
    assert G.encoder_weights_used == "random" and G.encoder_weights_reason == "not requested"


def test_generator_is_a_unet_clipped_after_layer3():
    G = ResNet18UNet()
    names = {n.split(".")[0] for n, _ in G.named_parameters()}
    assert {"layer1", "layer2", "layer3"} <= names and not names & {"layer4", "fc"}
    assert G.stem[0].in_channels == 1
    assert generator_class("resnet18_unet") is ResNet18UNet


def test_generator_rejects_sizes_not_divisible_by_16():
    G = ResNet18UNet()
    with pytest.raises(ValueError, match="divisible by 16, got H=32, W=40"):
        G(torch.zeros(1, 1, 32, 40))


def test_generator_rejects_unknown_weights():
    with pytest.raises(ValueError, match="encoder_weights"):
        ResNet18UNet(encoder_weights="places365")


def test_imagenet_weights_unavailable_falls_back_with_one_line(offline_hub, capsys):
    G = ResNet18UNet(encoder_weights="imagenet")
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "encoder weights: imagenet unavailable (URLError: <urlopen error offline (test)>); using random init"]
    assert G.encoder_weights_used == "random"
    assert "offline (test)" in G.encoder_weights_reason
    assert G(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_imagenet_weights_come_from_the_hub_cache(offline_hub, capsys):
    """A cached file is used without any download, and conv1 becomes the sum over RGB."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None).state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(reference, offline_hub / RESNET18_FILE)
    G = ResNet18UNet(encoder_weights="imagenet", out_channels=3)
    assert capsys.readouterr().out == ""
    assert G.encoder_weights_used == "imagenet"
    assert torch.equal(G.stem[0].weight, reference["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(G.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"])


@pytest.mark.parametrize("size,grid", [((32, 32), (2, 2)), ((64, 96), (6, 10)), ((256, 256), (30, 30))])
def test_patchgan_logit_grid(size, grid):
    D = PatchGAN(in_channels=3, ndf=8)
    assert D(torch.zeros(2, 3, *size)).shape == (2, 1, *grid)


def test_patchgan_layers_and_init():
    torch.manual_seed(0)
    D = PatchGAN(in_channels=4)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert abs(convs[3].weight.std().item() - 0.02) < 0.002
    assert discriminator_class("patchgan") is PatchGAN
    assert PatchGAN(in_channels=3, ndf=8, norm="instance")(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 2, 2)


def test_patchgan_in_channels_must_match():
    D = PatchGAN(in_channels=3, ndf=8)
    with pytest.raises(ValueError, match="built for 3 input channels got 4"):
        D(torch.zeros(1, 4, 32, 32))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    G = ResNet18UNet(out_channels=2)
    G.train()(torch.rand(2, 1, 32, 32))  # moves BatchNorm running stats off their defaults
    kwargs = {"out_channels": 2, "in_channels": 1, "encoder_weights": "imagenet"}
    path = tmp_path / "m" / "pretrained.pt"
    save_generator(path, G, arch="resnet18_unet", arch_kwargs=kwargs, color_space="lab", step=7,
                   card={"name": "t"})
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["arch"] == "resnet18_unet" and blob["step"] == 7 and blob["card"] == {"name": "t"}
    H, meta = load_generator(path)  # rebuilt with encoder_weights=None: no download attempted
    assert not H.training and meta["arch_kwargs"] == kwargs and meta["color_space"] == "lab"
    for (k, a), (k2, b) in zip(G.state_dict().items(), H.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(G.eval()(x), H(x))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [(7, 9), (1, 4), (16, 16)])
def test_decoder_upsample_equals_bilinear_interpolate_forward_and_backward(fmt, hw):
    from pipeline.models.resnet_unet import upsample2x_bilinear

    x = torch.randn(2, 5, *hw, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    out = upsample2x_bilinear(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-12)
    grad = torch.randn_like(ref)
    (g_ref,), (g_out,) = torch.autograd.grad(ref, x, grad), torch.autograd.grad(out, x, grad)
    assert torch.allclose(g_out, g_ref, atol=1e-12)
    if fmt == torch.channels_last and hw != (1, 4):
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [(7, 9), (1, 4), (33, 16)])
def test_decoder_upsample_without_autograd_is_bit_for_bit_the_training_path(fmt, hw):
    """Inference (no_grad) takes a 2.3x faster path: the same numbers, bit for bit, and layout."""
    from pipeline.models.resnet_unet import upsample2x_bilinear

    torch.manual_seed(0)
    x = torch.randn(2, 5, *hw).contiguous(memory_format=fmt)
    train = upsample2x_bilinear(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        fast = upsample2x_bilinear(x)
    assert torch.equal(fast, train) and fast.stride() == train.stride()


def test_resnet18_is_torchvision_resnet18_weight_for_weight_and_rng_for_rng():
    """Our torchvision-free ResNet-18 (the CLI's start-up without torchvision) holds the same
    random weights under one seed, leaves the generator in the same state, computes the same
    outputs, and loads torchvision's state dict (so ImageNet weights fit it)."""
    from torchvision.models import resnet18

    from pipeline.models.resnet18 import ResNet18

    torch.manual_seed(3)
    ours = ResNet18()
    after_ours = torch.rand(4)
    torch.manual_seed(3)
    theirs = resnet18(weights=None)
    after_theirs = torch.rand(4)
    assert torch.equal(after_ours, after_theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ours.load_state_dict(b)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_colorize_cli_path_does_not_import_torchvision():
    """Importing torchvision costs seconds of ``astrogan colorize`` start-up; building and running
    the default colorizers must not need it."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from pipeline.models import generator_class\n"
            "for name in ('resnet18_unet', 'guided_unet'):\n"
            "    G = generator_class(name)().eval()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_imagenet_urls_are_torchvisions():
    """The weights are fetched without torchvision; the files must stay the ones its enums name."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights, VGG19_Weights

    from pipeline.models import imagenet

    enums = (ResNet18_Weights.IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V2, VGG19_Weights.IMAGENET1K_V1)
    assert {f"{type(e).__name__}.{e.name}": e.url for e in enums} == imagenet.URLS


def test_imagenet_encoder_offline_does_not_import_torchvision(tmp_path):
    """A training stage asks for ImageNet weights; finding them unavailable offline must not cost
    torchvision's import (2.4 s per stage here)."""
    import os
    import subprocess
    import sys

    code = ("import sys, torch, torch.hub\n"
            "def no_network(*a, **k):\n"
            "    import urllib.error\n"
            "    raise urllib.error.URLError('offline (test)')\n"
            "torch.hub.download_url_to_file = no_network\n"
            "from pipeline.models.resnet_unet import ResNet18UNet\n"
            "G = ResNet18UNet(encoder_weights='imagenet')\n"
            "tv = sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision')\n"
            "print(G.encoder_weights_used, tv)\n")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "random []", out.stdout + out.stderr


def test_unet_on_our_resnet18_trains_bit_for_bit_like_on_torchvisions():
    """Autograd sums a tensor's gradients in the order the forward used it (a U-Net skip feeds a
    block's two branches and the decoder), so the blocks must run torchvision's operations in its
    order: three Adam steps of the U-Net on either encoder give the same weights, bit for bit."""
    import copy

    from torchvision.models import resnet18

    from pipeline.models.resnet_unet import ResNet18UNet

    torch.manual_seed(0)
    ours = ResNet18UNet()
    theirs = copy.deepcopy(ours)
    tv = resnet18(weights=None)
    for name in ("layer1", "layer2", "layer3"):
        layer = copy.deepcopy(getattr(tv, name))
        layer.load_state_dict(getattr(ours, name).state_dict())
        setattr(theirs, name, layer)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1,
                torch.rand(2, 2, 32, 32, generator=gen) * 2 - 1) for _ in range(3)]
    for net in (ours, theirs):
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        for x, y in batches:
            opt.zero_grad()
            (net(x) - y).abs().mean().backward()
            opt.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
