"""Noise inversion as A1111 Tiled Diffusion defines it (facts sheet §2.7), on the call's tiled model.

The inversion (`find_noise_for_image_sigma_adjustment`, sampler forced to Euler):

    s = k-diffusion sigmas(steps) flipped: [0, s_min, ..., s_max]      (steps + 1 values)
    for i = 1..steps:
        c_in = 1 / sqrt(s_i^2 + 1), c_out = -s_i                        (epsilon models)
        eps = tiled_model(x * c_in, sigma_to_t(s_i) / retouch, positive prompt only, no CFG)
        x = x + (x - (x + eps * c_out)) / s_i * (s_i - s_{i-1})         (derivative at the target sigma)
    latent = x / s_max

Its use in img2img: `eps_inv = latent - init / sigma_0` (sigma_0 = s_max, the first sigma of
A1111's default Euler schedule), mixed with seeded noise by the renoise mask
`m = clamp((1 - resize(retouch_mask(grey image, kernel))) * renoise_strength, 0, 1)`,
`eps = ((1 - m) eps_inv + m eps_rand) / sqrt(m^2 + (1 - m)^2)`, and the img2img starts from
`init + eps * sigma_start`. The tiled model is the call's method's fusion: a wrapper method
(`InversionMethod`) runs this loop on the pipeline's `Run`, so prompts, plan, kernel, view
batches and the cost meter are those of an ordinary call.

`retouch_mask` is TD-A's guided filter ("Copy from Zhihu.com"): box-filter guided filter of the
grey image on itself (eps 0.01, a kernel x kernel box, OpenCV's reflect-101 border, centred
anchor), minus the image, times 255, cast to uint8. Negative values meet a float -> uint8 cast,
whose result C leaves undefined: x86 (where A1111 runs) truncates toward zero and wraps modulo
256 (-3.7 -> 253), ARM saturates to 0. mdtools does the x86 wrap explicitly, on every platform
(`RETOUCH_CAST = "wrap"`), so the mask is the one most users of the tool get.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods import Method

#: A1111 Tiled Diffusion's noise-inversion defaults (UI: steps 10, retouch 1, renoise strength 1, kernel 64)
NOISE_INVERSION_DEFAULTS: dict[str, Any] = {"steps": 10, "retouch": 1.0, "renoise_strength": 1.0, "renoise_kernel": 64}
#: the UI ranges of TD-A (inclusive), used to validate
NOISE_INVERSION_RANGES: dict[str, tuple[float, float]] = {"steps": (1, 200), "retouch": (1, 100),
                                                          "renoise_strength": (0, 2), "renoise_kernel": (2, 512)}
#: how the negative guided-filter residuals are cast to uint8 (module docstring): the x86 wrap
RETOUCH_CAST = "wrap"
#: the guided filter's regulariser in TD-A's get_retouch_mask
GUIDED_EPS = 0.01


def check_noise_inversion(value: Any) -> dict[str, Any] | None:
    """None / False (off), True (TD-A's defaults) or a dict of steps, retouch, renoise_strength,
    renoise_kernel -> the full settings, or a ConfigError naming the key and its range."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(NOISE_INVERSION_DEFAULTS)
    if not isinstance(value, dict):
        raise ConfigError(f"noise_inversion must be None, True or a dict with keys {sorted(NOISE_INVERSION_DEFAULTS)}, "
                          f"got {type(value).__name__}")
    unknown = sorted(set(value) - set(NOISE_INVERSION_DEFAULTS))
    if unknown:
        raise ConfigError(f"noise_inversion has unknown key(s) {unknown}; valid keys: {sorted(NOISE_INVERSION_DEFAULTS)}")
    out = {**NOISE_INVERSION_DEFAULTS, **value}
    for key, (lo, hi) in NOISE_INVERSION_RANGES.items():
        v = out[key]
        integral = key in ("steps", "renoise_kernel")
        ok = isinstance(v, int) if integral else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not (lo <= v <= hi):
            kind = "an integer" if integral else "a number"
            raise ConfigError(f"noise_inversion.{key}={v!r} must be {kind} in [{lo}, {hi}] "
                              f"(A1111 default {NOISE_INVERSION_DEFAULTS[key]})")
    return out


# ---- k-diffusion's discrete sigma schedule (CompVisDenoiser) ---------------------------------
def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log of the training sigmas sqrt((1 - abar) / abar), float64."""
    a = alphas_cumprod.to(torch.float64)
    return (((1 - a) / a) ** 0.5).log()


def t_to_sigma(t: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """k-diffusion's t_to_sigma: log-linear interpolation of the training sigmas at fractional t."""
    t = t.to(torch.float64)
    lo, hi = t.floor().long(), t.ceil().long()
    w = t.frac()
    return ((1 - w) * logs[lo] + w * logs[hi]).exp()


def sigma_to_t(sigma: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """k-diffusion's sigma_to_t: the fractional timestep of `sigma` (inverse of t_to_sigma)."""
    log_sigma = sigma.to(torch.float64).log().reshape(-1)
    dists = log_sigma - logs[:, None]
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=logs.shape[0] - 2)
    high = low + 1
    lo_v, hi_v = logs[low], logs[high]
    w = ((lo_v - log_sigma) / (lo_v - hi_v)).clamp(0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def inversion_sigmas(alphas_cumprod: torch.Tensor, steps: int) -> torch.Tensor:
    """k-diffusion's get_sigmas(steps) flipped: [0, s_min, ..., s_max] (steps + 1 values, float64)."""
    logs = log_sigmas(alphas_cumprod)
    t = torch.linspace(len(logs) - 1, 0, steps, dtype=torch.float64)
    s = torch.cat([t_to_sigma(t, logs), torch.zeros(1, dtype=torch.float64)])
    return s.flip(0)


# ---- the renoise mask ---------------------------------------------------------------------------
def _box(img: np.ndarray, k: int) -> np.ndarray:
    """cv2.blur(img, (k, k)): normalised box filter, BORDER_REFLECT_101, anchor at k // 2."""
    before, after = k // 2, k - 1 - k // 2
    p = np.pad(img.astype(np.float64), ((before, after), (before, after)), mode="reflect")
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = img.shape
    s = c[k:k + h, k:k + w] - c[0:h, k:k + w] - c[k:k + h, 0:w] + c[0:h, 0:w]
    return (s / (k * k)).astype(np.float32)


def uint8_cast(x: np.ndarray) -> np.ndarray:
    """float -> uint8 as x86 does it (RETOUCH_CAST): truncate toward zero, wrap modulo 256."""
    return np.mod(np.trunc(x).astype(np.int64), 256).astype(np.uint8)


def retouch_mask(grey_uint8: np.ndarray, kernel: int) -> np.ndarray:
    """TD-A's get_retouch_mask on an (H, W) uint8 grey image: float32 in [0, 1] (module docstring)."""
    img = grey_uint8.astype(np.float32) / 255.0
    m_i = _box(img, kernel)
    m_ii = _box(img * img, kernel)
    var = m_ii - m_i * m_i
    a = var / (var + GUIDED_EPS)  # cov(I, p) = var(I) with p = I
    b = m_i - a * m_i
    gf = (a * img + b - img) * 255.0
    return uint8_cast(gf).clip(0, 255).astype(np.float32) / 255.0


def renoise_mask(grey_uint8: np.ndarray, kernel: int, strength: float, latent_hw: tuple[int, int]) -> torch.Tensor:
    """m = clamp((1 - bilinear(retouch_mask, latent size)) * strength, 0, 1): (1, 1, h, w) float32."""
    gf = torch.from_numpy(retouch_mask(grey_uint8, kernel))[None, None]
    gf = F.interpolate(gf, size=latent_hw, mode="bilinear", align_corners=False)
    return ((1 - gf) * strength).clamp(0, 1)


def mix_noise(eps_inv: torch.Tensor, eps_rand: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The variance-preserving mix ((1 - m) eps_inv + m eps_rand) / sqrt(m^2 + (1 - m)^2)."""
    m = mask.to(eps_inv.device, eps_inv.dtype)
    return ((1 - m) * eps_inv + m * eps_rand) / torch.sqrt(m * m + (1 - m) * (1 - m))


# ---- the inversion loop on the pipeline's Run ----------------------------------------------------
class InversionMethod(Method):
    """Runs the inversion loop with the fusion of `inner` (any img2img method): views, weights and
    prompts are the inner method's; positive prompt only (the call runs with guidance 1, no CFG)."""

    name = "noise_inversion"

    def __init__(self, inner: Method, sigmas: torch.Tensor, logs: torch.Tensor, retouch: float, progress: bool = False):
        super().__init__()
        self.inner = inner
        self.sigmas = sigmas
        self.logs = logs
        self.retouch = float(retouch)
        self.show_progress = progress
        self.kernel_from_call = inner.kernel_from_call
        self.supports_circular = inner.supports_circular

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fusion": self.inner.describe(), "steps": len(self.sigmas) - 1,
                "retouch": self.retouch}

    def resolve_kernel(self, kernel: Any, kernel_params: dict | None) -> Any:
        return self.inner.resolve_kernel(kernel, kernel_params)

    def check(self, call: Any) -> None:
        self.inner.check(call)

    def extra_prompts(self, call: Any) -> list[tuple[str, str | None]]:
        return self.inner.extra_prompts(call)

    def needs_cfg(self, call: Any) -> bool:
        return False

    def estimate(self, call: Any) -> dict[str, float]:
        return {"unet_evaluations": call.plan.n_views * (len(self.sigmas) - 1) * call.batch}

    def generate(self, run: Any) -> torch.Tensor:
        """x <- init latents (the call's `latents=`), the Euler inversion loop; returns x / s_max."""
        x = run.user_latents.to(run.device, torch.float32)
        s = self.sigmas
        ts = sigma_to_t(s[1:], self.logs) / self.retouch
        run.stage = run.new_stage(run.call.plan, ts.to(run.device, torch.float32))
        run.n_stages += 1
        self.inner.begin(run)
        steps = range(1, len(s))
        if self.show_progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="noise inversion", leave=False)
        for i in steps:
            run.stage.step = i - 1
            si, sp = float(s[i]), float(s[i - 1])
            t = ts[i - 1].to(run.device, torch.float32)
            x_in = (x / math.sqrt(si * si + 1)).to(run.dtype)
            eps = run.fuse(x_in, t, self.inner.views(run, i - 1), input_fn=self.inner.inputs(run, i - 1, t)).float()
            denoised = x + eps * (-si)
            x = x + (x - denoised) / si * (si - sp)
            run.total_steps += 1
        return x / float(s[-1])


def check_inversion_model(prediction_type: str | None, flow: bool) -> None:
    """TD-A's formula is for epsilon-prediction UNets; refuse the others with the reason."""
    if flow:
        raise ConfigError("noise_inversion is A1111 Tiled Diffusion's k-diffusion inversion for epsilon UNets; "
                          "a flow-matching model (SD3, FLUX) has no such schedule: use noise_inversion=None")
    if prediction_type not in (None, "epsilon"):
        raise ConfigError(f"noise_inversion needs an epsilon-prediction model; this one predicts {prediction_type!r}: "
                          "use noise_inversion=None")


__all__ = ["GUIDED_EPS", "InversionMethod", "NOISE_INVERSION_DEFAULTS", "NOISE_INVERSION_RANGES", "RETOUCH_CAST",
           "check_inversion_model", "check_noise_inversion", "inversion_sigmas", "log_sigmas", "mix_noise", "renoise_mask",
           "retouch_mask", "sigma_to_t", "t_to_sigma", "uint8_cast"]
