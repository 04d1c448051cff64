"""The PyTorch side of the DDPM speed comparison: a diffusers ``UNet2DModel`` shaped like ours.

Imported by ``ddpm_speed.py`` only when ``--torch`` is given (needs the ``[bench]`` extra:
``pip install torch==2.13.0 diffusers``). Nothing here imports jaxgen.

The peer model mirrors a jaxgen UNet config: ``block_out_channels = ch * ch_mults``,
``layers_per_block = num_res_blocks`` (diffusers, like DDPM, puts ``layers_per_block + 1``
res blocks per up level), a strided-conv downsample and nearest+conv upsample per level,
self-attention at the same feature-map sizes (``AttnDownBlock2D`` / ``AttnUpBlock2D``) and in
the middle, and scale-shift norm when ours uses FiLM. It is unconditional: diffusers'
``UNet2DModel`` has no text conditioning. With ``patch_size > 1`` it is wrapped in the same
space-to-depth fold as ours (``pixel_unshuffle`` before, ``pixel_shuffle`` after), so it runs at
``image_size / patch_size`` with ``3 * patch_size**2`` channels in and out.

The training step does what jaxgen's DDPM step does on random data: noise a batch at random
timesteps, predict, MSE, backward, gradient clipping, AdamW, and an EMA of the parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from diffusers import UNet2DModel


def _norm_groups(channels: Sequence[int], requested: int) -> int:
    """The largest group count <= requested dividing every channel count (diffusers needs it)."""
    for g in range(min(requested, *channels), 0, -1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


class _Output:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class PatchedUNet(torch.nn.Module):
    """``pixel_unshuffle(p)`` -> UNet2DModel -> ``pixel_shuffle(p)`` (space-to-depth)."""

    def __init__(self, unet: UNet2DModel, patch_size: int):
        super().__init__()
        self.unet = unet
        self.patch_size = patch_size
        self.config = unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> _Output:
        p = self.patch_size
        out = self.unet(torch.nn.functional.pixel_unshuffle(x, p), t).sample
        return _Output(torch.nn.functional.pixel_shuffle(out, p))


def build_unet(
    *,
    image_size: int,
    ch: int,
    ch_mults: Sequence[int],
    num_res_blocks: int,
    attn_resolutions: Sequence[int],
    num_heads: int = 1,
    film: bool = True,
    norm_groups: int = 32,
    patch_size: int = 1,
) -> torch.nn.Module:
    """A diffusers UNet2DModel with the widths and attention placement of a jaxgen UNet config.

    ``attn_resolutions`` are feature-map sizes, as in jaxgen (after the space-to-depth fold).
    """
    widths = tuple(ch * m for m in ch_mults)
    size = image_size // patch_size
    attn_levels = [size // 2**i in set(attn_resolutions) for i in range(len(widths))]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn_levels))
    # diffusers fixes the head *dimension*; ours fixes the head count. Match the head count at the
    # narrowest attention level (the middle block's width if no level has attention).
    attn_width = min([w for w, a in zip(widths, attn_levels, strict=True) if a] or [widths[-1]])
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3 * patch_size**2,
        out_channels=3 * patch_size**2,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=widths,
        layers_per_block=num_res_blocks,
        attention_head_dim=max(attn_width // max(num_heads, 1), 1),
        norm_num_groups=_norm_groups(widths, norm_groups),
        resnet_time_scale_shift="scale_shift" if film else "default",
        dropout=0.0,
    )
    return unet if patch_size == 1 else PatchedUNet(unet, patch_size)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Trainer:
    """One AdamW training step of a UNet2DModel on random data (epsilon prediction).

    Args:
      model: the UNet.
      batch_size: images per step.
      image_size: side of the square images.
      num_timesteps: length of the (cosine) noise schedule.
      threads: ``torch.set_num_threads``.
      seed: torch seed for the parameters and the data.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int,
        image_size: int,
        num_timesteps: int = 1000,
        learning_rate: float = 1e-3,
        grad_clip: float = 1.0,
        ema_decay: float = 0.999,
        threads: int = 2,
        seed: int = 0,
    ):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model = model.float().train()
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.ema_decay = ema_decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        self.alpha_bars = (abar[1:] / abar[0]).clamp(min=1e-5).float()
        self.num_timesteps = num_timesteps
        gen = torch.Generator().manual_seed(seed)
        # Random "images": a fixed pool, like a dataset held in memory.
        self.x0 = torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1

    def step(self) -> float:
        """One training step; returns the loss (a Python float, so the step has finished)."""
        b = self.batch_size
        t = torch.randint(0, self.num_timesteps, (b,))
        noise = torch.randn_like(self.x0)
        abar = self.alpha_bars[t].view(b, 1, 1, 1)
        x_t = abar.sqrt() * self.x0 + (1 - abar).sqrt() * noise
        pred = self.model(x_t, t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
        return float(loss.detach())

    def count_flops(self) -> float:
        """FLOPs of one training step by ``torch.utils.flop_counter`` (runs one untimed step)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return float(counter.get_total_flops())

    def time_steps(self, n: int) -> list[float]:
        """Per-step wall times (seconds) of ``n`` steps."""
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.step()
            out.append(time.perf_counter() - t0)
        return out
