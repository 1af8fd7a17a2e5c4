"""RobustBench's CIFAR-10 WideResNets with the zoo's state-dict layouts, and the zoo's entries.

:class:`ZooWideResNet` (RobustBench ``WideResNet``, TRADES' code) and :class:`ZooDMWideResNet`
(DeepMind's ``DMWideResNet``) rebuild the zoo's architectures key for key, with each entry's input
normalisation inside (:data:`ZOO_PREPROCESSING`). :data:`ZOO` lists the entries (facts from
``robustbench/model_zoo/cifar10.py``); :func:`probelib.models.pretrained.load_robustbench` loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from probelib._util import check_choice

__all__ = ["ZOO", "ZOO_PREPROCESSING", "ZooEntry", "ZooWideResNet", "ZooDMWideResNet", "zoo_names"]

#: Input normalisation of the zoo's entries (applied inside the model): name -> (mean, std).
ZOO_PREPROCESSING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "pm1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # x ↦ 2x − 1
    "rony": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "augustin": ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
                 (0.24703225141799082, 0.24348516474564, 0.26158783926049628)),
}


class _Normalise(nn.Module):
    """(x − mean) / std with non-persistent buffers (identity when ``preprocessing`` is None)."""

    def __init__(self, preprocessing: str | None, channels: int):
        super().__init__()
        if preprocessing is not None:
            check_choice("zoo preprocessing", preprocessing, ZOO_PREPROCESSING)
            mean, std = ZOO_PREPROCESSING[preprocessing]
            if len(mean) != channels:
                raise ValueError(f"preprocessing {preprocessing!r} is for {len(mean)}-channel input, "
                                 f"the model takes {channels}")
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        self.preprocessing = preprocessing
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.preprocessing is None else (x - self.mean) / self.std


class _ZooBlock(nn.Module):
    """RobustBench ``WideResNet``'s BasicBlock: keys bn1, conv1, bn2, conv2, convShortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes  # as the zoo: the stride does not enter
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                     bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        if not self.equal_in_out:  # the shortcut then sees the pre-activated input
            x = o
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return out + (x if self.equal_in_out else self.convShortcut(x))


class _ZooGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_ZooBlock(in_planes if i == 0 else out_planes, out_planes,
                                               stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _wrn_plan(model: nn.Module, depth: int, widen: int, in_channels: int,
              preprocessing: str | None) -> tuple[int, list[int]]:
    """Blocks per group and channel widths of a WRN-depth-widen; sets ``model.normalise`` and
    ``model.feature_dim`` (both zoo layouts share them)."""
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        raise ValueError(f"WideResNet depth must be 6n+4 (>= 10) and width >= 1, got depth={depth}, width={widen}")
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    model.normalise = _Normalise(preprocessing, in_channels)
    model.feature_dim = ch[3]
    return (depth - 4) // 6, ch


class _ZooNet(nn.Module):
    """What both zoo layouts share: ``forward = classifier(features(x))``, the head named ``_head``."""

    _head: str

    @property
    def classifier(self) -> nn.Module:
        return getattr(self, self._head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ZooWideResNet(_ZooNet):
    """RobustBench's ``WideResNet`` (TRADES' code; the zoo's ``Standard`` is WRN-28-10) with its
    state-dict layout: ``conv1``, ``block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``,
    ``bn1``, ``fc``. The zoo entry's preprocessing runs first (``preprocessing=None``: none).
    ``features(x)``: pooled after the final BN-ReLU (64·widen-d); ``classifier``: ``fc``.
    """

    _head = "fc"

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_channels: int = 3,
                 preprocessing: str | None = None):
        super().__init__()
        n, ch = _wrn_plan(self, depth, widen, in_channels, preprocessing)
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _ZooGroup(n, ch[0], ch[1], 1)
        self.block2 = _ZooGroup(n, ch[1], ch[2], 2)
        self.block3 = _ZooGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        _wrn_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled activations after the final BN-ReLU (avg_pool2d(8) at 32 px, as the zoo)."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalise(x)))))
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1), 1)


class _DMBlock(nn.Module):
    """DeepMind's WideResNet block (RobustBench ``DMWideResNet``): explicit 'SAME' padding,
    keys batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = o
        v = F.pad(o, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(x) if self.has_shortcut else x)


class _DMGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*[_DMBlock(in_planes if i == 0 else out_planes, out_planes,
                                              stride if i == 0 else 1, activation) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}  # the zoo's Swish is x·sigmoid(x) = SiLU


class ZooDMWideResNet(_ZooNet):
    """RobustBench's ``DMWideResNet`` (DeepMind's; Gowal et al., Rebuffi et al., ...) with its
    state-dict layout: ``init_conv``, ``layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1,
    shortcut}``, ``batchnorm``, ``logits``. CIFAR-10 mean/std inside (the zoo's entries);
    ``activation`` ``"silu"`` (the zoo's Swish) or ``"relu"``. ``features``: 64·width-d.
    """

    _head = "logits"

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 preprocessing: str | None = "cifar10", activation: str = "silu"):
        super().__init__()
        check_choice("activation", activation, _ACTIVATIONS)
        act = _ACTIVATIONS[activation]
        n, ch = _wrn_plan(self, depth, width, in_channels, preprocessing)
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_DMGroup(n, ch[0], ch[1], 1, act), _DMGroup(n, ch[1], ch[2], 2, act),
                                   _DMGroup(n, ch[2], ch[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)
        _wrn_init(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled activations after the final BN-activation (64·width-d)."""
        out = self.layer(self.init_conv(self.normalise(x)))
        return torch.flatten(F.adaptive_avg_pool2d(self.relu(self.batchnorm(out)), 1), 1)


def _wrn_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench CIFAR-10 WideResNet: its family (``"wrn"``: ``WideResNet`` layout;
    ``"dm"``: ``DMWideResNet``), depth, width, preprocessing (a :data:`ZOO_PREPROCESSING` key or
    None) and the Google Drive id the zoo publishes it under, per threat model."""

    name: str
    family: str
    depth: int
    width: int
    preprocessing: str | None
    gdrive: Mapping[str, str] = field(default_factory=dict)
    activation: str = "silu"

    def build(self, num_classes: int = 10) -> nn.Module:
        """The architecture with random weights."""
        if self.family == "wrn":
            return ZooWideResNet(self.depth, self.width, num_classes, preprocessing=self.preprocessing)
        return ZooDMWideResNet(self.depth, self.width, num_classes, preprocessing=self.preprocessing,
                               activation=self.activation)


def _zoo(name: str, family: str, depth: int, width: int, preprocessing: str | None, gdrive: dict) -> ZooEntry:
    return ZooEntry(name, family, depth, width, preprocessing, gdrive)


#: RobustBench's CIFAR-10 WideResNet entries (facts from robustbench/model_zoo/cifar10.py):
#: name -> :class:`ZooEntry`. ``sub_block1`` weights some entries carry are unused by the zoo's
#: forward and are dropped on loading.
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    _zoo('Carmon2019Unlabeled', 'wrn', 28, 10, None, {'Linf': '15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ'}),
    _zoo('Sehwag2020Hydra', 'wrn', 28, 10, None, {'Linf': '1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y'}),
    _zoo('Wang2020Improving', 'wrn', 28, 10, None, {'Linf': '1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ'}),
    _zoo('Hendrycks2019Using', 'wrn', 28, 10, 'pm1', {'Linf': '1-DcJsYw2dNEOyF9epks2QS7r9nqBDEsw'}),
    _zoo('Rice2020Overfitting', 'wrn', 34, 20, 'cifar10', {'Linf': '1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-'}),
    _zoo('Zhang2019Theoretically', 'wrn', 34, 10, None, {'Linf': '1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_'}),
    _zoo('Huang2020Self', 'wrn', 34, 10, None, {'Linf': '1nInDeIyZe2G-mJFxQJ3UoclQNomWjMgm'}),
    _zoo('Zhang2019You', 'wrn', 34, 10, None, {'Linf': '1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA'}),
    _zoo('Zhang2020Attacks', 'wrn', 34, 10, None, {'Linf': '1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk'}),
    _zoo('Wu2020Adversarial_extra', 'wrn', 28, 10, None, {'Linf': '1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp'}),
    _zoo('Wu2020Adversarial', 'wrn', 34, 10, None,
         {'Linf': '13LBcgNvhFppCFG22i1xATrahFPfMgXGf', 'L2': '1M5AZ0EZQt7d2AlTmsnqZcfx91-x7YEAV'}),
    _zoo('Gowal2020Uncovering_70_16', 'dm', 70, 16, 'cifar10', {'Linf': '1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl'}),
    _zoo('Gowal2020Uncovering_70_16_extra', 'dm', 70, 16, 'cifar10', {'Linf': '1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ'}),
    _zoo('Gowal2020Uncovering_34_20', 'dm', 34, 20, 'cifar10', {'Linf': '1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O'}),
    _zoo('Gowal2020Uncovering_28_10_extra', 'dm', 28, 10, 'cifar10', {'Linf': '1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2'}),
    _zoo('Sehwag2021Proxy', 'wrn', 34, 10, None,
         {'Linf': '1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm', 'L2': '1UviikNzpltVFsgMuqQ8YhpmvGczGRS4S'}),
    _zoo('Sitawarin2020Improving', 'wrn', 34, 10, None, {'Linf': '12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6'}),
    _zoo('Cui2020Learnable_34_20', 'wrn', 34, 20, None, {'Linf': '1y7BUxPhQjNlb4w4BUlDyYJIS4w4fsGiS'}),
    _zoo('Cui2020Learnable_34_10', 'wrn', 34, 10, None, {'Linf': '16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV'}),
    _zoo('Zhang2020Geometry', 'wrn', 28, 10, None, {'Linf': '1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk'}),
    _zoo('Rebuffi2021Fixing_28_10_cutmix_ddpm', 'dm', 28, 10, 'cifar10',
         {'Linf': '1-0EChXbc6pOvx26O17av263bCeqIAz6s', 'L2': '1-DUKcvfDzeWwt0NK7q2XvU-dIi8up8B0'}),
    _zoo('Rebuffi2021Fixing_106_16_cutmix_ddpm', 'dm', 106, 16, 'cifar10',
         {'Linf': '1-4qnkveIkeWoGdF72kpEFHETiY3y4_tF'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_ddpm', 'dm', 70, 16, 'cifar10',
         {'Linf': '1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi', 'L2': '1-8ECIOYF4JB0ywxJOmhkefnv4TW-KuXp'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra', 'dm', 70, 16, 'cifar10',
         {'Linf': '1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg', 'L2': '1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708'}),
    _zoo('Sridhar2021Robust', 'wrn', 28, 10, None, {'Linf': '1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0'}),
    _zoo('Sridhar2021Robust_34_15', 'wrn', 34, 15, None, {'Linf': '1-3ii3GX93YqIcmJ3VNsOgYA7ecdnSZ0Z'}),
    _zoo('Rade2021Helper_extra', 'dm', 34, 10, 'cifar10', {'Linf': '1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t'}),
    _zoo('Rade2021Helper_ddpm', 'dm', 28, 10, 'cifar10', {'Linf': '1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z'}),
    _zoo('Addepalli2021Towards_WRN34', 'wrn', 34, 10, None,
         {'Linf': '1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB', 'corruptions': '1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB'}),
    _zoo('Gowal2021Improving_70_16_ddpm_100m', 'dm', 70, 16, 'cifar10', {'Linf': '10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4'}),
    _zoo('Gowal2021Improving_28_10_ddpm_100m', 'dm', 28, 10, 'cifar10', {'Linf': '12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx'}),
    _zoo('Chen2021LTD_WRN34_10', 'wrn', 34, 10, None, {'Linf': '1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D'}),
    _zoo('Chen2021LTD_WRN34_20', 'wrn', 34, 20, None, {'Linf': '1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm'}),
    _zoo('Standard', 'wrn', 28, 10, None,
         dict.fromkeys(("Linf", "L2", "corruptions"), "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC")),
    _zoo('Jia2022LAS-AT_34_10', 'wrn', 34, 10, None, {'Linf': '1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD'}),
    _zoo('Jia2022LAS-AT_70_16', 'wrn', 70, 16, None, {'Linf': '1-4p-Gr0hjl8wq6qvvTza4x4a5Rmu-Bfr'}),
    _zoo('Pang2022Robustness_WRN28_10', 'dm', 28, 10, 'cifar10', {'Linf': '16ChNkterCp17BXv-xxqpfedb4u2_CjjS'}),
    _zoo('Pang2022Robustness_WRN70_16', 'dm', 70, 16, 'cifar10', {'Linf': '1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3'}),
    _zoo('Addepalli2022Efficient_WRN_34_10', 'wrn', 34, 10, None,
         {'Linf': '1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA', 'corruptions': '1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA'}),
    _zoo('Wang2023Better_WRN-28-10', 'dm', 28, 10, 'cifar10',
         {'Linf': '1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI', 'L2': '1-fwKiJXEqHHUngt8wKsNnHuD4vAPvPXC'}),
    _zoo('Wang2023Better_WRN-70-16', 'dm', 70, 16, 'cifar10',
         {'Linf': '1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap', 'L2': '101UyURyte05tJLA9VFRBN6UDLyn-0sJw'}),
    _zoo('Xu2023Exploring_WRN-28-10', 'dm', 28, 10, 'cifar10', {'Linf': '1k1uJI13ft0h0dfzuEihVpBvjBXwFRH2o'}),
    _zoo('Cui2023Decoupled_WRN-28-10', 'dm', 28, 10, 'cifar10', {'Linf': '1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2'}),
    _zoo('Cui2023Decoupled_WRN-34-10', 'wrn', 34, 10, None, {'Linf': '1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN'}),
    _zoo('Chen2024Data_WRN_34_10', 'wrn', 34, 10, None, {'Linf': '1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R'}),
    _zoo('Chen2024Data_WRN_34_20', 'wrn', 34, 20, None, {'Linf': '1-IbKAGtp79tAEm59N0i8QMvMZ3nxSD2-'}),
    _zoo('Bartoldson2024Adversarial_WRN-94-16', 'dm', 94, 16, 'cifar10', {'Linf': '1g6o9H1b6vjoBi1USdCBt64C8B8LPiioX'}),
    _zoo('Bartoldson2024Adversarial_WRN-82-8', 'dm', 82, 8, 'cifar10', {'Linf': '1--jl8qJh624SFqFffvg1IkYR-fZGA2Sr'}),
    _zoo('Rony2019Decoupling', 'wrn', 28, 10, 'rony', {'L2': '1Oua2ZYSxNvoDrtlY9vTtRzyBWHziE4Uy'}),
    _zoo('Gowal2020Uncovering', 'dm', 70, 16, 'cifar10', {'L2': '1QL4SNvYydjIg1uI3VP9SyNt-2kTXRisG'}),
    _zoo('Gowal2020Uncovering_extra', 'dm', 70, 16, 'cifar10', {'L2': '1pkZDCpCBShpAnx92n8PUeNOY1fSiTi0s'}),
    _zoo('Augustin2020Adversarial_34_10', 'wrn', 34, 10, 'augustin', {'L2': '1qPsKS546mKcs71IEhzOS-kLpQFSFhaKL'}),
    _zoo('Augustin2020Adversarial_34_10_extra', 'wrn', 34, 10, 'augustin', {'L2': '1--1MFZja6C2iVWi9MgetYjnSIenRBLT-'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra_Linf', 'dm', 70, 16, 'cifar10',
         {'corruptions': '1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg'}),
    _zoo('Rebuffi2021Fixing_70_16_cutmix_extra_L2', 'dm', 70, 16, 'cifar10',
         {'corruptions': '1JX82BDVBNO-Ffa2J37EuB8C-aFCbz708'}),
    _zoo('Hendrycks2020AugMix_WRN', 'wrn', 40, 2, 'pm1', {'corruptions': '1wy7gSRsUZzCzj8QhmTbcnwmES_2kkNph'}),
]}


def zoo_names(threat_model: str | None = None) -> list[str]:
    """The zoo entries :func:`load_robustbench` knows (for one threat model: Linf, L2, corruptions)."""
    return [n for n, e in ZOO.items() if threat_model is None or threat_model in e.gdrive]
