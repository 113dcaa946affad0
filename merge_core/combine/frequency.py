"""crossover: a frequency-domain mix of the base and a model (low frequencies from one, high from the other).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
sd-mecha 1.1's crossover(a, b, alpha, tilt) mixes the n-dimensional real DFTs of a and b through a filter f in
[0, 1] over the frequencies: R = irfftn((1 - f) rfftn(a) + f rfftn(b)). The DFT is linear, so with a = C and
b = M1, d = R - C = irfftn(f rfftn(M1 - C)): one transform pair instead of three transforms."""
from __future__ import annotations

import math

import torch

from .params import CombineMethod, MethodParams

Tensor = torch.Tensor


def frequency_radius(shape: tuple[int, ...]) -> Tensor:
    """Each rfftn bin's normalised frequency: sqrt(mean over dimensions of g_d^2), g_d = |frequency| / (size // 2)
    along a full dimension (0 at DC, 1 at Nyquist) and position / (size - 1) along the last, halved one (size here
    is the halved length); a dimension of one bin gives 0."""
    gradients = []
    for i, size in enumerate(shape):
        if i == len(shape) - 1 or size == 1:
            g = torch.linspace(0, 1, size)
        else:
            half = size // 2
            g = torch.cat([torch.linspace(0, (size - 1) // 2, size - half), torch.linspace(half, 1, half)]) / half
        gradients.append(g)
    if len(shape) == 1:
        return gradients[0]
    radius = torch.zeros(shape)
    for d, g in enumerate(gradients):
        view = [1] * len(shape)
        view[d] = -1
        radius.add_(g.square().reshape(view))
    return radius.div_(len(shape)).sqrt_()


def crossover_filter(shape: tuple[int, ...], mix: float, tilt: float) -> Tensor:
    """The share f of the model in each frequency bin: the cut through the (radius, share) plane is tilted by
    tilt * 90 degrees around the origin, then moved along its normal to pass through (mix, 1 - mix). tilt 0: f = 1
    above radius 1 - mix (the model's high frequencies); 1: f = mix everywhere; 2: f = 1 below 1 - mix; tilt is
    periodic with period 4, and past 2 the roles of the sides swap."""
    tilt = tilt - math.floor(tilt // 4 * 4)
    inverted = tilt > 2
    if inverted:
        mix = 1 - mix
    radius = frequency_radius(shape)
    if tilt < 1e-10 or abs(tilt - 4) < 1e-10:
        f = (radius > 1 - mix).float()
    elif abs(tilt - 2) < 1e-10:
        f = (radius < 1 - mix).float()
    else:
        cot = 1 / math.tan(math.pi * tilt / 2)
        if tilt <= 1 or 2 < tilt <= 3:
            f = radius.mul_(cot).add_(mix * cot + mix - cot)
        else:
            f = radius.mul_(cot).add_(mix - mix * cot)
        f = f.clamp_(0, 1)
    return 1 - f if inverted else f


def crossover_delta(base, models, params: MethodParams, key, fallbacks):
    """d = crossover(C, M1, mix, tilt) - C. mix 0: 0; mix 1: M1 - C; tilt 1, a scalar, or M1 close to C
    (torch.allclose): the plain mix * (M1 - C), as sd-mecha returns there."""
    base, model = base.detach().float(), models[0].detach().float()
    mix, tilt = params.mix, params.tilt
    tau = model - base
    if mix == 0:
        return torch.zeros_like(base)
    if mix == 1:
        return tau
    if tilt == 1 or base.dim() == 0 or torch.allclose(base, model):
        return tau.mul_(mix)
    spectrum = torch.fft.rfftn(tau, s=tau.shape)
    del tau
    spectrum.mul_(crossover_filter(tuple(spectrum.shape), mix, tilt).to(spectrum.device))
    return torch.fft.irfftn(spectrum, s=base.shape)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("crossover", "Crossover", crossover_delta, 1, ("mix", "tilt"),
                  "d = irfftn(f * rfftn(M1 - C)), f = the share of M1 per frequency: a cut at radius 1 - mix "
                  "tilted by tilt (0: M1's high frequencies, 1: f = mix)",
                  max_models=1, reference="sd-mecha (ljleb), merge method crossover"),
)
