"""DDPM speed: training throughput, achieved FLOP/s, sampler efficiency, and a PyTorch peer.

    python benchmarks/ddpm_speed.py [--config=experiments/ddpm.py[:smoke]] [--steps=N] [--torch]
        [--json_out=FILE] [--config.train.batch_size=...]

Uses the library's own objects (the pipeline from the registry, ``workdir.init_state``, the data
source and batch iterator, ``pipeline.train_step`` jitted with the state donated as the loop does,
``pipeline._sample``) and prints one table:

1. training: step time and images/s with real batches from the data iterator, and with one batch
   fed again and again (the difference is the data-loading overhead);
2. FLOPs of the compiled step (XLA cost analysis) / step time = achieved GFLOP/s, next to a jitted
   2048x2048 float32 matmul measured in the same run (goal: step >= 0.30 of the matmul rate);
3. sampler efficiency: the compiled DDIM sampler's wall time / (num_steps x one jitted denoiser
   forward at the same effective batch, 2B with classifier-free guidance) (goal <= 1.10);
4. with ``--torch``: a diffusers ``UNet2DModel`` of the same widths trained in the same process
   on random data (2 torch threads), its images/s and parameter count, and the ratio
   jaxgen/diffusers for our UNet made unconditional (``config.model.text = None``) and for the
   text-conditional one. The peer wrapped in our 2x2 pixel folding is the like-for-like one
   (goal >= 1.0); every other row names what differs between the two networks.

Every comparison is a ratio of numbers measured side by side in this process: the timed blocks
of the contenders are interleaved over ``--rounds`` rounds and each reports the median step time,
so a load that comes and goes on a shared machine hits all of them alike.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # Run from a checkout without installing jaxgen.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import MATMUL_N, Matmul, Trainer, flops_of, log, median, pause, timed  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxgen import data as data_lib  # noqa: E402
from jaxgen.training import distributed  # noqa: E402
from jaxgen.training import mesh as mesh_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_HERE.parent / "experiments" / "ddpm.py"), "Experiment config file[:arg]."
)
_STEPS = flags.DEFINE_integer("steps", 12, "Timed training steps per contender (after warmup).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed training steps after compilation.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds the timed steps are split over.")
_TORCH = flags.DEFINE_bool("torch", False, "Also train a diffusers UNet2DModel (needs [bench]).")
_UNCOND = flags.DEFINE_bool(
    "uncond", True, "Also time our UNet without text conditioning (config.model.text = None)."
)
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", None, "DDIM steps (default: the config's).")
_SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch",
    None,
    "Prompts per sampler call (default: config.sample.batch_size, at most 16, for a short run).",
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed sampler runs (median).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the peer.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "On a CPU, devices for our step as the CLI makes them (0: one per core; 1: one device).",
)


# ----------------------------------------------------------------------------- helpers


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": cores,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{dev.device_kind} x{jax.device_count()}",
    }


class SamplerBench:
    """The compiled sampler (``pipeline._sample``) against one jitted denoiser forward."""

    def __init__(self, trainer: Trainer, num_steps: int, batch: int):
        p = trainer.pipeline
        sc = p.config.sample
        self.pipeline = p
        self.sampler, self.num_steps = str(sc.sampler), num_steps
        self.guidance, self.eta = float(sc.guidance_scale), float(sc.eta)
        self.batch = batch
        self.guided = p.conditional and self.guidance != 1.0
        self.eff_batch = 2 * batch if self.guided else batch
        self.params = (trainer.state.ema_params or trainer.state.params)["unet"]
        src = trainer.fixed_batch["tokens"]
        reps = -(-batch // src.shape[0])
        self.tokens = jnp.tile(np.asarray(src), (reps, 1))[:batch]
        self.rng = jax.random.key(2)
        size = int(p.config.data.image_size)

        def forward(params, x, t, tokens):
            return p.model.apply({"params": params}, x, t, tokens if p.conditional else None)

        n = self.eff_batch
        self.x = jax.random.normal(jax.random.key(3), (n, size, size, 3), jnp.float32)
        self.t = jnp.full((n,), p.schedule.num_timesteps // 2, jnp.int32)
        ftok = jnp.concatenate([self.tokens, self.tokens])[:n]
        self.fwd_args = (self.params, self.x, self.t, ftok)
        self.forward = jax.jit(forward).lower(*self.fwd_args).compile()
        self.fwd_flops = flops_of(self.forward)
        t0 = time.perf_counter()
        jax.block_until_ready(self._sample())
        self.compile_s = time.perf_counter() - t0
        jax.block_until_ready(self.forward(*self.fwd_args))
        self.sample_times: list[float] = []
        self.fwd_times: list[float] = []

    def _sample(self):
        return self.pipeline._sample(
            self.params,
            self.tokens,
            self.rng,
            self.sampler,
            self.num_steps,
            self.guidance,
            self.eta,
        )

    def run(self, fwd_reps: int = 5) -> None:
        self.sample_times.append(timed(self._sample))
        pause()
        self.fwd_times += [timed(lambda: self.forward(*self.fwd_args)) for _ in range(fwd_reps)]

    @property
    def efficiency(self) -> float:
        return median(self.sample_times) / (self.num_steps * median(self.fwd_times))


# ----------------------------------------------------------------------------- table


class Table:
    def __init__(self):
        self.lines: list[str] = []

    def section(self, title: str) -> None:
        self.lines += ["", title]

    def row(self, name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISS")
        self.lines.append(f"  {name:<66} {value:>14}  {goal:<8} {verdict}".rstrip())

    def note(self, text: str) -> None:
        self.lines.append(f"  ({text})")

    def __str__(self) -> str:
        return "\n".join(self.lines)


def ms(s: float) -> str:
    return f"{1e3 * s:.1f} ms"


# ----------------------------------------------------------------------------- main


def unconditional(config):
    """The config without a text encoder (and so without one to load or freeze)."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.model.text = None
        cfg.model.text_init = ""
        cfg.model.freeze_text = False
    return cfg


def main(argv):
    del argv
    config = _CONFIG.value
    if config.pipeline != "ddpm":
        raise app.UsageError(f"this benchmark is for the ddpm pipeline, not {config.pipeline!r}")
    # Our step runs data-parallel over the CPU's cores as `python -m jaxgen.main` runs it.
    distributed.use_cpu_cores(_CPU_DEVICES.value, int(config.train.batch_size))
    info = machine()
    steps, rounds = max(_STEPS.value, 1), max(min(_ROUNDS.value, _STEPS.value), 1)
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    tc, size = config.train, int(config.data.image_size)
    bs = int(tc.batch_size)

    print(
        f"# {info['cpu']}, {info['cores']} cores, jax {info['jax']}, "
        f"backend {info['backend']} ({info['device']})",
        flush=True,
    )
    mesh = mesh_lib.make_mesh(config)
    mesh_lib.check_batch_size(bs, mesh)
    source = data_lib.build_source(config.data, "train")
    iterator = data_lib.make_batch_iterator(
        source,
        batch_size=bs,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    log("compiling the train step ...")
    ours = Trainer(config, mesh, source, iterator)
    ours.warmup(_WARMUP.value)
    uncond = None
    if _UNCOND.value and ours.pipeline.conditional:
        log("compiling the unconditional train step ...")
        uncond = Trainer(unconditional(config), mesh, source, iterator)
        uncond.warmup(_WARMUP.value)
    peers = []  # [(label, what differs from ours, torch_unet.Trainer, step times)]
    if _TORCH.value:
        try:
            import torch_unet
        except ImportError as e:
            raise app.UsageError(
                f"--torch needs the [bench] extra (pip install torch==2.13.0 diffusers): {e}"
            ) from e
        log("building and warming up the diffusers peer ...")
        uc = config.model.unet
        patch = int(uc.get("patch_size", 1) or 1)
        # The peer at the same image size; if ours folds pixels into channels, also a peer with
        # the same fold, which is the like-for-like architecture.
        for p in sorted({1, patch}):
            model = torch_unet.build_unet(
                image_size=size,
                ch=int(uc.ch),
                ch_mults=tuple(uc.ch_mults),
                num_res_blocks=int(uc.num_res_blocks),
                attn_resolutions=tuple(uc.attn_resolutions),
                num_heads=int(uc.get("num_heads", 1)),
                film=bool(uc.get("film", False)),
                norm_groups=int(uc.get("norm_groups", 32)),
                patch_size=p,
            )
            trainer = torch_unet.Trainer(
                model,
                batch_size=bs,
                image_size=size,
                num_timesteps=int(config.diffusion.num_timesteps),
                learning_rate=float(tc.learning_rate),
                grad_clip=float(tc.get("grad_clip", 1.0) or 1e9),
                ema_decay=float(tc.ema_decay),
                threads=_TORCH_THREADS.value,
            )
            for _ in range(max(_WARMUP.value, 1)):
                trainer.step()
            trainer.flops = trainer.count_flops()
            label = "diffusers UNet2DModel" + (f" + {p}x{p} space-to-depth" if p > 1 else "")
            differs = (
                ""
                if p == patch
                else f"no {patch}x{patch} pixel folding: it convolves the full {size}x{size} grid"
            )
            peers.append((label, differs, trainer, []))
    matmul = Matmul()

    log(f"timing {steps} training steps per contender over {rounds} round(s) ...")
    for n in per_round:
        ours.run(n, with_data=True)
        pause()
        ours.run(n, with_data=False)
        pause()
        if uncond is not None:
            uncond.run(n, with_data=False)
            pause()
        for _, _, trainer, times in peers:
            times += trainer.time_steps(n)
            pause()
        matmul.run()
        pause()

    summary = [
        f"ours {median(ours.times['data']):.2f} s (data), {median(ours.times['fixed']):.2f} s"
    ]
    if uncond is not None:
        summary.append(f"uncond {median(uncond.times['fixed']):.2f} s")
    summary += [f"{label} {median(times):.2f} s" for label, _, _, times in peers]
    log("median step: " + "; ".join(summary))
    sample_steps = int(_SAMPLE_STEPS.value or config.sample.num_steps)
    sample_batch = int(_SAMPLE_BATCH.value or min(int(config.sample.batch_size), 16))
    log(f"compiling the sampler ({sample_steps} steps, batch {sample_batch}) ...")
    sampler = SamplerBench(ours, sample_steps, sample_batch)
    log(f"timing the sampler ({_REPEATS.value} repeats) ...")
    for _ in range(max(_REPEATS.value, 1)):
        sampler.run()
        pause()
        matmul.run(3)

    # ---- results
    peak = matmul.gflops
    t_data, t_fixed = median(ours.times["data"]), median(ours.times["fixed"])
    step_gflops = ours.flops / t_fixed / 1e9
    fwd_gflops = sampler.fwd_flops / median(sampler.fwd_times) / 1e9
    res = {
        "machine": info,
        "config": {
            "unet": config.model.unet.to_dict(),
            "text": config.model.text.to_dict() if config.model.get("text") else None,
            "image_size": size,
            "batch_size": bs,
            "dataset": config.data.name,
        },
        "method": {"timed_steps": steps, "rounds": rounds, "statistic": "median"},
        "train": {
            "params": int(ours.params),
            "compile_s": ours.compile_s,
            "step_s_with_data": t_data,
            "step_s_same_batch": t_fixed,
            "images_per_s_with_data": ours.img_s("data"),
            "images_per_s_same_batch": ours.img_s("fixed"),
            "data_overhead_fraction": t_data / t_fixed - 1.0,
            "step_flops": ours.flops,
            "achieved_gflops": step_gflops,
            "matmul_gflops": peak,
            "fraction_of_matmul": step_gflops / peak,
        },
        "sampler": {
            "sampler": sampler.sampler,
            "num_steps": sample_steps,
            "batch": sample_batch,
            "guidance_scale": sampler.guidance,
            "forward_batch": sampler.eff_batch,
            "compile_s": sampler.compile_s,
            "sample_s": median(sampler.sample_times),
            "forward_s": median(sampler.fwd_times),
            "efficiency": sampler.efficiency,
            "forward_flops": sampler.fwd_flops,
            "forward_gflops": fwd_gflops,
            "forward_fraction_of_matmul": fwd_gflops / peak,
            "images_per_s": sample_batch / median(sampler.sample_times),
        },
    }
    if uncond is not None:
        res["train_uncond"] = {
            "params": int(uncond.params),
            "step_s_same_batch": median(uncond.times["fixed"]),
            "images_per_s_same_batch": uncond.img_s("fixed"),
            "step_flops": uncond.flops,
            "achieved_gflops": uncond.flops / median(uncond.times["fixed"]) / 1e9,
        }
    if peers:
        import torch

        res["torch"] = []
        for label, differs, trainer, times in peers:
            ips = bs / median(times)
            unet = getattr(trainer.model, "unet", trainer.model)
            entry = {
                "label": label,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "differs": differs,  # from our unconditional UNet; "" = like for like
                "params": torch_unet.num_params(trainer.model),
                "block_out_channels": list(unet.config.block_out_channels),
                "down_block_types": list(unet.config.down_block_types),
                "step_s": median(times),
                "step_flops": trainer.flops,
                "achieved_gflops": trainer.flops / median(times) / 1e9,
                "images_per_s": ips,
                "ratio_text_cond": ours.img_s("fixed") / ips,
            }
            if uncond is not None:
                entry["ratio_uncond"] = uncond.img_s("fixed") / ips
            res["torch"].append(entry)

    # ---- table
    uc = config.model.unet
    tab = Table()
    tab.lines.append(
        f"jaxgen DDPM speed: {info['cpu']}, {info['cores']} cores, jax {info['jax']}, "
        f"backend {info['backend']} ({info['device']})"
    )
    tab.lines.append(
        f"config: {config.data.name} {size}x{size}, batch {bs}, UNet ch={uc.ch} "
        f"ch_mults={tuple(uc.ch_mults)} res_blocks={uc.num_res_blocks} "
        f"attn={tuple(uc.attn_resolutions)} xattn={tuple(uc.get('cross_attn_resolutions', ()))}"
        f", text={'yes' if ours.pipeline.conditional else 'no'}"
    )
    tab.lines.append(
        f"timing: median of {steps} steps per contender, interleaved over {rounds} round(s), "
        f"after compile + {_WARMUP.value} warmup steps"
    )
    tab.section("training: jit(train_step, donate_argnums=(0,))")
    tab.row("parameters", f"{ours.params:,}")
    tab.row("compile time", f"{ours.compile_s:.1f} s")
    tab.row("step time, batches from the data iterator", ms(t_data))
    tab.row("step time, same batch again (no data loading)", ms(t_fixed))
    tab.row("data-loading overhead", f"{100 * (t_data / t_fixed - 1):+.1f} %")
    tab.row("images/s, with data loading", f"{ours.img_s('data'):.1f}")
    tab.row("images/s, without data loading", f"{ours.img_s('fixed'):.1f}")
    tab.section("FLOP rate")
    tab.row("step FLOPs (XLA cost analysis)", f"{ours.flops / 1e9:.2f} GFLOP")
    tab.row("step achieved rate (FLOPs / step time w/o data)", f"{step_gflops:.1f} GFLOP/s")
    tab.row(f"jitted {MATMUL_N}x{MATMUL_N} f32 matmul, same run", f"{peak:.1f} GFLOP/s")
    tab.row(
        "step rate / matmul rate",
        f"{step_gflops / peak:.3f}",
        ">= 0.30",
        step_gflops / peak >= 0.30,
    )
    tab.section(
        f"sampler: {sampler.sampler}, {sample_steps} steps, batch {sample_batch}, guidance "
        f"{sampler.guidance:g}" + (" (cond+uncond in one call)" if sampler.guided else "")
    )
    tab.row("sampler compile time", f"{sampler.compile_s:.1f} s")
    tab.row(
        f"sampler wall time (median of {len(sampler.sample_times)})", ms(res["sampler"]["sample_s"])
    )
    tab.row(
        f"one jitted denoiser forward at batch {sampler.eff_batch}", ms(res["sampler"]["forward_s"])
    )
    tab.row(
        f"sampler / ({sample_steps} x forward)",
        f"{sampler.efficiency:.3f}",
        "<= 1.10",
        sampler.efficiency <= 1.10,
    )
    tab.row("forward achieved rate", f"{fwd_gflops:.1f} GFLOP/s")
    tab.row("forward rate / matmul rate", f"{fwd_gflops / peak:.3f}")
    tab.row("sampled images/s", f"{res['sampler']['images_per_s']:.2f}")
    if uncond is not None or peers:
        tab.section("training throughput vs a PyTorch peer (no data loading on either side)")
        tab.row("jaxgen, text-conditional (cross-attn + text encoder): params", f"{ours.params:,}")
        tab.row("jaxgen, text-conditional: images/s", f"{ours.img_s('fixed'):.1f}")
        if uncond is not None:
            tab.row("jaxgen, unconditional (model.text=None): params", f"{uncond.params:,}")
            tab.row("jaxgen, unconditional: images/s", f"{uncond.img_s('fixed'):.1f}")
            u = res["train_uncond"]
            tab.row(
                "jaxgen, unconditional: step GFLOP (XLA) and GFLOP/s",
                f"{u['step_flops'] / 1e9:.1f} @ {u['achieved_gflops']:.1f}",
            )
        for t in res.get("torch", []):
            tab.row(f"{t['label']}, unconditional: params", f"{t['params']:,}")
            tab.row(
                f"{t['label']} (torch {t['torch']}, {t['threads']} thr): images/s",
                f"{t['images_per_s']:.1f}",
            )
            tab.row(
                f"{t['label']}: step GFLOP (torch counter) and GFLOP/s",
                f"{t['step_flops'] / 1e9:.1f} @ {t['achieved_gflops']:.1f}",
            )
            # The goal is read against the like-for-like ratio only; every other row says what
            # differs between the two networks, so its ratio is not read as the libraries'.
            text = "ours adds cross-attention and a text encoder"
            if uncond is not None:
                r = t["ratio_uncond"]
                if t["differs"]:
                    tab.row(f"  jaxgen unconditional / it (differs: {t['differs']})", f"{r:.3f}")
                else:
                    tab.row(
                        "  jaxgen unconditional / it (like for like: the same network)",
                        f"{r:.3f}",
                        ">= 1.0",
                        r >= 1.0,
                    )
            differs = "; ".join(d for d in (text, t["differs"]) if d)
            tab.row(
                f"  jaxgen text-conditional / it (differs: {differs})",
                f"{t['ratio_text_cond']:.3f}",
            )
        if peers:
            tab.note(
                "diffusers' UNet2DModel is unconditional: no cross-attention, no text encoder;"
            )
            tab.note(
                "the text-conditional ratio charges ours for both, the unconditional does not."
            )
            tab.note(
                "peers: float32, random data; MSE + backward + grad clip + AdamW + EMA per step"
            )
            for t in res["torch"]:
                blocks = ", ".join(
                    f"{b}({c})"
                    for b, c in zip(t["down_block_types"], t["block_out_channels"], strict=True)
                )
                tab.note(f"{t['label']}: {blocks}")
    print()
    print(tab, flush=True)
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {_JSON_OUT.value}")


if __name__ == "__main__":
    app.run(main)
