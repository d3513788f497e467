"""Model zoo: every model takes images in [0, 1], normalizes inside and returns logits.

``create_model(name, **kwargs)`` builds a registered model; see :func:`list_models`. Each model
registers itself with ``@MODELS.register(name)`` in its own module; importing those modules
here is what registers them all.
"""

from __future__ import annotations

from robustact.models.alexnet import AlexNet, AlexNetCifar
from robustact.models.factory import PRETRAINED_MODELS, create_model, model_arguments
from robustact.models.normalize import Normalize
from robustact.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    alexnet_key_map,
    load_torchvision_weights,
    resnet18_key_map,
)
from robustact.models.registry import MODELS, list_models
from robustact.models.resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    PreActBlock,
    PreActResNet18,
    ResNet18,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from robustact.models.robustbench import load_robustbench_state
from robustact.models.small_cnn import SmallCNN
from robustact.models.vgg import VGGKAF
from robustact.models.wide_resnet import WideResNet, wrn28_10, wrn34_10

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "PRETRAINED_MODELS",
    "AlexNet",
    "AlexNetCifar",
    "BasicBlock",
    "CifarResNet",
    "Normalize",
    "PadShortcut",
    "PreActBlock",
    "PreActResNet18",
    "ResNet18",
    "SmallCNN",
    "VGGKAF",
    "WideResNet",
    "alexnet_key_map",
    "create_model",
    "list_models",
    "load_robustbench_state",
    "load_torchvision_weights",
    "model_arguments",
    "resnet18_key_map",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "wrn28_10",
    "wrn34_10",
]
