"""ImageNet weights from PyTorch's model store, read through the torch hub cache.

The files are torchvision's (its weights enums name them); they are fetched here with
``torch.hub.load_state_dict_from_url``, which is all that ``WeightsEnum.get_state_dict`` does, so that
loading them, or finding them unavailable offline, does not import torchvision (2.4 s on this
2-core CPU, through torch._dynamo: a cost every training stage paid). A test checks that the URLs
are still torchvision's.
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch

URLS = {
    "ResNet18_Weights.IMAGENET1K_V1": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "ResNet50_Weights.IMAGENET1K_V2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "VGG19_Weights.IMAGENET1K_V1": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}


def state_dict(name: str) -> dict[str, torch.Tensor]:
    """The state dict of weights ``name`` (a key of :data:`URLS`, torchvision's enum member name).
    Torch hub cache first, then the download. Raises what the download raises."""
    # torch.hub announces a download on stdout; keep that only when it worked, so an offline run
    # prints just the caller's one-line notice.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        state = torch.hub.load_state_dict_from_url(URLS[name], progress=False, weights_only=True)
    sys.stdout.write(said.getvalue())
    return state
