"""Speed of DALL-E's stage 2: training tokens/s, the KV-cached decode against recomputing the
whole prefix, the compiled sampler against its steps, and MaskGIT against the autoregressive
decode.

    python benchmarks/dalle_speed.py [--config=experiments/dalle.py[:arg]] [--steps=8]
        [--batch=16] [--repeats=5] [--json_out=FILE]

Everything uses the library's objects (the registry's pipeline, the loop's jitted and donated
train step, ``pipeline._sample_tokens``). Speed does not depend on the weights, so the tokenizer
is a freshly initialised one of the config's tokenizer experiment and no workdir is read. Rows:

- training: images/s and image tokens/s of the train step with real batches; the share of the
  step spent encoding images into tokens (the jitted encoder alone on the same batch), which
  says whether precomputing the tokens would pay.
- cached / recompute: tokens/s of the compiled decode with the key/value cache over the same
  decode written without one (every position runs the whole stream so far, as a transformer
  without a cache must), both without guidance; goal >= 5 at 64 image tokens.
- sampler / (tokens x cached step): the compiled decode's wall time over N times one jitted
  cached decoding step at the same batch (2B with guidance) plus the caption's prefill; goal
  <= 1.1.
- MaskGIT / autoregressive: images/s of MaskGIT's decode (``sample.maskgit_steps`` steps) on a
  bidirectional model of the same size over the autoregressive decode, and the transformer
  forward passes each needs per image.

Contenders' timed blocks are interleaved over ``--repeats`` rounds; each reports its median.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    example_batch,
    fresh_run,
    log,
    median,
    parse_overrides,
    pause,
    timed,
    train_throughput,
)

from jaxgen import data as data_lib  # noqa: E402
from jaxgen.config import apply_overrides, load_experiment  # noqa: E402
from jaxgen.models import token_sampling  # noqa: E402
from jaxgen.pipelines import dalle  # noqa: E402


def tokenizer_run(config):
    """A freshly initialised run of the config's tokenizer experiment (``load_run``'s shape)."""
    tok_config = load_experiment(str(config.pretrain.tokenizer))
    tok_config.data.image_size = config.data.image_size
    return fresh_run(tok_config)


def build(config, run):
    """The DALL-E pipeline on ``run``'s tokenizer and a fresh state."""
    pipe = dalle.DALLEPipeline(config, load_run=lambda path: run)
    batch = example_batch(config)
    return pipe, pipe.warm_start(pipe.init(jax.random.key(1), batch))


def recompute_decode(model, params, text, rng, temperature=1.0):
    """The autoregressive decode without a cache: position j runs the whole stream so far."""
    n = model.num_image_tokens

    def step(carry, j):
        tokens, rng = carry
        rng, draw = jax.random.split(rng)
        _, logits = model.apply({"params": params}, text, tokens)
        token = token_sampling.sample_logits(draw, logits[:, j], temperature)
        return (tokens.at[:, j].set(token), rng), None

    start = jnp.zeros((text.shape[0], n), jnp.int32)
    (tokens, _), _ = jax.lax.scan(step, (start, rng), jnp.arange(n))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/dalle.py")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--steps", type=int, default=8, help="timed train steps")
    parser.add_argument("--batch", type=int, default=16, help="prompts per decode")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json_out", type=Path)
    args = parser.parse_args()
    try:
        config = apply_overrides(load_experiment(args.config), parse_overrides(args.set))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"# {os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.default_backend()}")
    run = tokenizer_run(config)
    result = {"config": args.config}

    log("training step")
    config.model.causal = True
    pipe, state = build(config, run)
    train = train_throughput(config, args.config, args.steps, pipeline=pipe)
    n = pipe.model.num_image_tokens
    result.update(train)
    result["image_tokens_per_second"] = train["images_per_second"] * n
    src = data_lib.build_source(config.data, "train")
    images = jnp.asarray(np.stack([src[i]["image"] for i in range(train["batch_size"])]))
    encode = jax.jit(pipe.encode)
    jax.block_until_ready(encode(state.params["tokenizer"], images))
    enc_s = median([timed(lambda: encode(state.params["tokenizer"], images)) for _ in range(5)])
    result["encode_share_of_step"] = enc_s / train["step_seconds"]

    log("decoding")
    prompts = pipe.judge.prompts("val", args.batch, seed=3)[0]
    text = jnp.asarray(pipe.tokenize(prompts))
    params = state.ema_params["transformer"]
    model, opts = pipe.model, pipe._sampling_options(**pipe._default_options())
    prefix = np.zeros((args.batch, n), np.int32)
    rng = jax.random.key(0)

    # Cache against no cache: both unguided (one stream), the config's temperature and filters.
    plain = opts[:3] + (1.0,) + opts[4:]

    def cached_plain():
        return pipe._sample_tokens(params, text, rng, prefix, 0, plain)

    def cached():
        return pipe._sample_tokens(params, text, rng, prefix, 0, opts)

    recompute = jax.jit(lambda p, t, r: recompute_decode(model, p, t, r, opts[0]))
    guided = opts[3] != 1.0
    width = 2 * args.batch if guided else args.batch
    cache = model.init_cache(width)
    wide_text = jnp.concatenate([text, text]) if guided else text
    step = jax.jit(
        lambda p, tok, j, c: model.apply({"params": p}, tok, j, c, method=model.decode_step)
    )
    prefill = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, method=model.prefill))
    token = jnp.zeros((width,), jnp.int32)
    _, filled = jax.block_until_ready(prefill(params, wide_text, cache))
    jax.block_until_ready((cached(), cached_plain(), recompute(params, text, rng)))
    jax.block_until_ready(step(params, token, 3, filled))

    config.model.causal = False
    mg_pipe, mg_state = build(config, run)
    mg_params = mg_state.ema_params["transformer"]
    mg_opts = mg_pipe._sampling_options(**mg_pipe._default_options())
    mg_given = np.zeros((args.batch, n), bool)

    def maskgit():
        return mg_pipe._sample_tokens(mg_params, text, rng, prefix, mg_given, mg_opts)

    jax.block_until_ready(maskgit())
    times = {k: [] for k in ("cached", "plain", "recompute", "step", "prefill", "maskgit")}
    for _ in range(args.repeats):
        times["cached"].append(timed(cached))
        pause()
        times["plain"].append(timed(cached_plain))
        pause()
        times["recompute"].append(timed(lambda: recompute(params, text, rng)))
        pause()
        times["step"].append(
            median([timed(lambda: step(params, token, 3, filled)) for _ in range(8)])
        )
        times["prefill"].append(timed(lambda: prefill(params, wide_text, cache)))
        pause()
        times["maskgit"].append(timed(maskgit))
        pause()
    t = {k: median(v) for k, v in times.items()}
    result.update(
        decode_batch=args.batch,
        image_tokens=n,
        cached_tokens_per_second=args.batch * n / t["plain"],
        recompute_tokens_per_second=args.batch * n / t["recompute"],
        cached_over_recompute=t["recompute"] / t["plain"],
        sampler_over_steps=t["cached"] / (n * t["step"] + t["prefill"]),
        autoregressive_images_per_second=args.batch / t["cached"],
        maskgit_images_per_second=args.batch / t["maskgit"],
        maskgit_over_autoregressive=t["cached"] / t["maskgit"],
        maskgit_steps=int(mg_opts[4]),
        guidance=guided,
    )
    r = result
    print(f"\n{args.config}: batch {r['batch_size']}, {n} image tokens, guidance {guided}")
    print("\n| row | value | goal |\n|---|---:|---|")
    print(f"| training images/s | {r['images_per_second']:.1f} | |")
    print(f"| training image tokens/s | {r['image_tokens_per_second']:.0f} | |")
    print(f"| encoding's share of the train step | {r['encode_share_of_step']:.3f} | |")
    print(f"| cached decode tokens/s (no guidance) | {r['cached_tokens_per_second']:.0f} | |")
    print(f"| recompute decode tokens/s (no guidance) | {r['recompute_tokens_per_second']:.0f} | |")
    print(f"| cached / recompute | {r['cached_over_recompute']:.2f} | >= 5 |")
    print(
        f"| sampler / (tokens x cached step + prefill) | {r['sampler_over_steps']:.3f} | <= 1.1 |"
    )
    print(
        f"| MaskGIT ({r['maskgit_steps']} steps) / autoregressive images/s | "
        f"{r['maskgit_over_autoregressive']:.2f} | |"
    )
    print(f"| forward passes per image: autoregressive / MaskGIT | {n} / {r['maskgit_steps']} | |")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
