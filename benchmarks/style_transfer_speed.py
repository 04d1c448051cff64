"""Neural style transfer speed (Gatys et al.): jaxgen's compiled L-BFGS loop against PyTorch's
"Neural Transfer Using PyTorch" tutorial, in one process, like for like.

    python benchmarks/style_transfer_speed.py [--size=256] [--steps=300] [--weights=vgg19.npz]
        [--repeats=1] [--json_out=FILE]

Both sides optimise the same image with the same network and weights: VGG-19's features up to
conv3_1, content loss at conv2_2, style losses at conv1_1, conv1_2, conv2_1, conv2_2 and conv3_1
(the tutorial's ``conv_4`` and ``conv_1`` .. ``conv_5``), the content image ``chelsea`` and the
style image ``immunohistochemistry`` both resized to ``size x size``, the optimisation starting
from the content image, float32, on the CPU.

- weights: ``--weights=FILE`` (any file ``jaxgen.models.vgg.load_vgg`` reads), or else a VGG-19
  with seeded random weights (He-normal kernels, zero biases) written in torchvision's layout to
  a temporary ``.npz``. Speed does not depend on the weights' values. Both sides read the same
  arrays (``load_vgg``; torch's convolutions get them transposed to OIHW) and the same input
  normalisation, and the benchmark checks that both networks compute the same conv3_1 features.
- torch: the tutorial's code (its ``Normalization``, ``ContentLoss``, ``StyleLoss`` with
  ``gram = F F^T / (a b c d)`` and MSE losses, ``get_style_model_and_losses`` on a VGG-19
  ``features`` stack built with ``torch.nn``, style weight 1e6, content weight 1,
  ``optim.LBFGS([input_img])`` with its defaults: 20 iterations a step, no line search) and its
  loop ``while run[0] <= num_steps: optimizer.step(closure)``; the closure (one evaluation of the
  loss and its gradient) is counted. ``torch.set_num_threads`` = the cores this process may use.
- jaxgen: ``StyleTransferPipeline`` of ``experiments/style_transfer.py:vgg`` with those layers
  (``tv_weight = 0``: the tutorial has no total-variation term); its optimiser is optax's L-BFGS
  with a zoom line search, ``minimize`` counts the evaluations each iteration made. A first
  compiled run of ``pipeline._iterate`` (the program ``optimise`` runs) for one iteration fewer
  than torch's evaluations (an iteration makes at least one, the first two) counts jaxgen's
  evaluations; the iteration count whose evaluations came closest to torch's is then compiled
  (ahead of time, timed apart) and timed; its own count is reported (another iteration count is
  another program, whose rounding can steer the line search elsewhere). With ``--optimise`` the
  library's entry point ``pipeline.optimise`` is timed too, with the compilation inside it
  measured apart (JAX's compile-time events).

Printed: per contender the evaluations, the loop's seconds (jaxgen's without compilation),
seconds per evaluation, one loss-and-gradient evaluation alone (warm, median of ``--evals``) and
the loop's time over evaluations x that (the loop's own overhead; goal for jaxgen <= 1.10), then
torch's time over jaxgen's for equal evaluations (> 1: jaxgen is faster). Two diagnostics of
jaxgen's loop overhead follow: a plain ``lax.scan`` of gradient steps around the same evaluation
(no L-BFGS), and how many of the compiled programs' convolutions read their kernel transposed
(``dim_labels=..._01oi``, which XLA:CPU runs slower than the canonical layout). The final losses are
printed for the record only: the two normalise their losses differently (the tutorial's MSE of
Gram matrices divided by a*b*c*d, Gatys et al.'s E_l in jaxgen) and so follow different paths.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # Run from a checkout without installing jaxgen.

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
    from torch import nn, optim  # noqa: E402
except ImportError:
    sys.exit(
        "error: this benchmark compares with PyTorch: pip install torch==2.13.0 "
        '(or the bench extra: pip install -e ".[bench]")'
    )

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from common import flops_of, log, median, pause  # noqa: E402

from jaxgen.config import apply_overrides, load_experiment  # noqa: E402
from jaxgen.data import style_images  # noqa: E402
from jaxgen.models import vgg  # noqa: E402
from jaxgen.pipelines.style_transfer import StyleTransferPipeline, to_model  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 256, "Both images are resized to size x size (multiple of 4).")
_STEPS = flags.DEFINE_integer(
    "steps", 300, "The tutorial's num_steps: `while run[0] <= steps: optimizer.step(closure)`."
)
_WEIGHTS = flags.DEFINE_string(
    "weights",
    None,
    "A VGG weight file load_vgg reads (.npz, .safetensors, .pth, .h5). Default: a VGG-19 with "
    "seeded random weights written to a temporary file.",
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Timed optimisations per contender, interleaved (median)."
)
_EVALS = flags.DEFINE_integer(
    "evals", 5, "Timed single loss-and-gradient evaluations per contender (median)."
)
_OPTIMISE = flags.DEFINE_bool(
    "optimise", True, "Also time the library's entry point, StyleTransferPipeline.optimise."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results as JSON here.")

CONTENT, STYLE = "chelsea", "immunohistochemistry"
#: Gatys et al.'s names of the tutorial's layers: content at conv_4, style at conv_1 .. conv_5.
CONTENT_LAYERS = ("conv2_2",)
STYLE_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")
#: The tutorial's loss weights.
STYLE_WEIGHT, CONTENT_WEIGHT = 1e6, 1.0
#: Compilation in JAX: tracing, lowering to MLIR, XLA's compile.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": cores(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "torch": torch.__version__,
        "load_average_at_start": load_average(),
    }


def load_average() -> float:
    """The 1-minute load average: above the cores, something else shares them."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


class CompileClock:
    """The seconds JAX spent compiling (tracing, lowering, XLA) since the last ``take()``."""

    def __init__(self):
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += duration

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


# ----------------------------------------------------------------------------- weights


def write_random_vgg19(directory: Path, seed: int) -> Path:
    """VGG-19 in torchvision's state-dict layout (``features.{idx}.weight`` OIHW and
    ``features.{idx}.bias``) with He-normal kernels (std sqrt(2 / (9 Cin))) and zero biases."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in vgg.expected_shapes("vgg19", "torchvision").items():
        if key.endswith(".weight"):
            _, cin, kh, kw = shape
            w = rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / (cin * kh * kw))
            arrays[key] = w.astype(np.float32)
        else:
            arrays[key] = np.zeros(shape, np.float32)
    path = directory / "vgg19_random.npz"
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- torch: the tutorial


class ContentLoss(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target.detach()

    def forward(self, input):
        self.loss = F.mse_loss(input, self.target)
        return input


def gram_matrix(input):
    a, b, c, d = input.size()  # a: batch, b: feature maps, (c, d): their size
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()

    def forward(self, input):
        G = gram_matrix(input)
        self.loss = F.mse_loss(G, self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.as_tensor(mean).view(-1, 1, 1)
        self.std = torch.as_tensor(std).view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


#: torchvision's VGG-19 configuration ("E"): output channels of each 3x3 convolution, "M" a
#: 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_CFG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19_features(params, last: str) -> nn.Sequential:
    """torchvision's ``vgg19().features`` up to the convolution ``last``, with ``load_vgg``'s
    arrays ``params`` (HWIO kernels, transposed to torch's OIHW)."""
    layers, cin = [], 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    indices = vgg.torchvision_indices(vgg.architecture_of(params))
    features = nn.Sequential(*layers[: indices[last] + 1])
    state = {}
    for name, idx in indices.items():
        if idx <= indices[last]:
            kernel = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)
            state[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
            state[f"{idx}.bias"] = torch.from_numpy(np.array(params[name]["bias"]))
    features.load_state_dict(state)
    return features.eval()


def get_style_model_and_losses(
    cnn, normalization_mean, normalization_std, style_img, content_img, content_layers, style_layers
):
    """The tutorial's: the network with a loss module after each named convolution, cut after
    the last one."""
    normalization = Normalization(normalization_mean, normalization_std)
    content_losses, style_losses = [], []
    model = nn.Sequential(normalization)
    i = 0  # increment every time we see a conv
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu_{i}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool_{i}"
        else:
            raise RuntimeError(f"Unrecognized layer: {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in content_layers:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{i}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{i}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[: (i + 1)]
    return model, style_losses, content_losses


def tutorial_name(layer: str) -> str:
    """``conv2_2`` -> the tutorial's ``conv_4``: the convolutions counted from the input."""
    return f"conv_{vgg.layer_names('vgg19').index(layer) + 1}"


class TorchSide:
    """The tutorial's model and ``run_style_transfer`` loop, timed (model building apart)."""

    def __init__(self, params, content: np.ndarray, style: np.ndarray):
        def tensor(image):  # the tutorial's transforms.ToTensor(): [1, 3, H, W] in [0, 1]
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
            return x.float().div(255.0).contiguous()

        self.content_img, self.style_img = tensor(content), tensor(style)
        pre = params["preprocess"]
        self.mean = np.asarray(pre["mean"]) / 255.0
        self.std = 1.0 / (255.0 * np.asarray(pre["scale"]))
        cnn = vgg19_features(params, max(CONTENT_LAYERS + STYLE_LAYERS, key=_depth))
        with torch.no_grad():
            self.model, self.style_losses, self.content_losses = get_style_model_and_losses(
                cnn,
                self.mean,
                self.std,
                self.style_img,
                self.content_img,
                [tutorial_name(n) for n in CONTENT_LAYERS],
                [tutorial_name(n) for n in STYLE_LAYERS],
            )
        self.model.eval()
        self.model.requires_grad_(False)
        self.cnn = cnn

    def scores(self):
        style_score = 0
        content_score = 0
        for sl in self.style_losses:
            style_score += sl.loss
        for cl in self.content_losses:
            content_score += cl.loss
        return style_score * STYLE_WEIGHT, content_score * CONTENT_WEIGHT

    def run(self, num_steps: int) -> dict:
        """``run_style_transfer``'s loop from the content image; its seconds, evaluations
        (closure calls), L-BFGS iterations and last losses."""
        input_img = self.content_img.clone()
        input_img.requires_grad_(True)
        optimizer = optim.LBFGS([input_img])
        run = [0]
        last = {}
        t0 = time.perf_counter()
        while run[0] <= num_steps:

            def closure():
                # correct the values of updated input image
                with torch.no_grad():
                    input_img.clamp_(0, 1)
                optimizer.zero_grad()
                self.model(input_img)
                style_score, content_score = self.scores()
                loss = style_score + content_score
                loss.backward()
                run[0] += 1
                last["style"], last["content"] = style_score.detach(), content_score.detach()
                return style_score + content_score

            optimizer.step(closure)
        with torch.no_grad():
            input_img.clamp_(0, 1)
        seconds = time.perf_counter() - t0
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        style, content = float(last["style"]), float(last["content"])
        return {
            "seconds": seconds,
            "evaluations": run[0],
            "iterations": int(state["n_iter"]),
            "final_loss": {"total": style + content, "content": content, "style": style},
        }

    def one_evaluation(self, reps: int) -> float:
        """The closure's work alone (forward, losses, backward) at the content image, warm: the
        median seconds of ``reps`` calls."""
        input_img = self.content_img.clone().requires_grad_(True)

        def evaluate():
            input_img.grad = None
            self.model(input_img)
            style_score, content_score = self.scores()
            (style_score + content_score).backward()

        evaluate()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            evaluate()
            times.append(time.perf_counter() - t0)
        return median(times)

    def features(self, layer: str) -> np.ndarray:
        """Post-ReLU activations of ``layer`` for the content image, NHWC (to check against
        jaxgen's)."""
        net = nn.Sequential(Normalization(self.mean, self.std), *self.cnn.children())
        stop = 1 + vgg.torchvision_indices("vgg19")[layer]
        with torch.no_grad():
            out = torch.relu(net[: stop + 1](self.content_img))
        return out.permute(0, 2, 3, 1).numpy()


def _depth(layer: str) -> int:
    return vgg.layer_names("vgg19").index(layer)


# ----------------------------------------------------------------------------- jaxgen


class JaxgenSide:
    """``StyleTransferPipeline`` on the same images, weights and layers."""

    def __init__(self, weights: Path, content: np.ndarray, style: np.ndarray, clock: CompileClock):
        config = load_experiment("style_transfer", "vgg")
        with config.ignore_type():  # arrays as well as paths and names
            config.content = content
            config.style = [style]
        apply_overrides(
            config,
            {
                "features": str(weights),
                "image_size": int(content.shape[0]),
                "loss.content_layers": CONTENT_LAYERS,
                "loss.style_layers": STYLE_LAYERS,
                "loss.tv_weight": 0.0,  # the tutorial has no total-variation term
                "optim.iterations": 1,
                "optim.chunk": 1,
            },
        )
        self.config, self.clock = config, clock
        self.pipeline = p = StyleTransferPipeline(config)
        if not np.array_equal(p.content, content) or not np.array_equal(p.styles[0], style):
            raise AssertionError("jaxgen did not read the same pixels")
        clock.take()
        t0 = time.perf_counter()
        self.state = jax.block_until_ready(jax.jit(p.init)(jax.random.key(0), None))
        self.init_s = time.perf_counter() - t0
        s = self.state
        self.args = (s["image"], s["opt_state"], s["net"], s["targets"])
        self.loops: dict[int, object] = {}
        self.loop_compile_s: dict[int, float] = {}

        def value_and_grad(image, net, targets):
            return jax.value_and_grad(p._objective(net, targets, p.mask_array()))(image)

        self.eval_fn = jax.jit(value_and_grad).lower(s["image"], s["net"], s["targets"]).compile()
        self.eval_flops = flops_of(self.eval_fn)
        self.parts_fn = jax.jit(lambda net, targets, image: p.loss(net, targets, image)[1])

    def loop(self, num: int):
        """``pipeline._iterate`` for ``num`` iterations under ``jit`` (what ``optimise`` runs),
        compiled ahead of time; the compile seconds are kept."""
        if num not in self.loops:
            p = self.pipeline

            def run(image, opt_state, net, targets):
                return p._iterate(image, opt_state, net, targets, p.mask_array(), num)

            t0 = time.perf_counter()
            self.loops[num] = jax.jit(run).lower(*self.args).compile()
            self.loop_compile_s[num] = time.perf_counter() - t0
        return self.loops[num]

    def plain_scan(self, num: int) -> dict:
        """``num`` plain gradient steps (``value_and_grad`` of ``_objective`` and ``x - lr g``)
        in one ``lax.scan``: a loop around the same evaluation without L-BFGS, to tell the loop
        body's cost from the optimiser's."""
        p = self.pipeline

        def run(image, net, targets):
            f = p._objective(net, targets, p.mask_array())

            def body(x, _):
                value, grad = jax.value_and_grad(f)(x)
                return x - 1e-3 * grad, value

            return jax.lax.scan(body, image, None, length=num)

        s = self.state
        compiled = jax.jit(run).lower(s["image"], s["net"], s["targets"]).compile()
        jax.block_until_ready(compiled(s["image"], s["net"], s["targets"]))
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(s["image"], s["net"], s["targets"]))
        return {"seconds": time.perf_counter() - t0, "evaluations": num, "compiled": compiled}

    def run(self, num: int) -> dict:
        loop = self.loop(num)
        t0 = time.perf_counter()
        image, _, _, evals = jax.block_until_ready(loop(*self.args))
        seconds = time.perf_counter() - t0
        evals = np.asarray(evals)
        return {
            "seconds": seconds,
            "evaluations": int(evals.sum()),
            "per_iteration": evals,
            "image": image,
        }

    def final_loss(self, image) -> dict:
        parts = self.parts_fn(self.state["net"], self.state["targets"], image)
        loss = self.pipeline.loss
        content = loss.content_weight * float(parts["content"][0])
        style = loss.style_weight * float(parts["style"][0])
        return {"total": content + style, "content": content, "style": style}

    def optimise(self, num: int) -> dict:
        """The library's entry point once: wall seconds and the compilation inside them."""
        self.clock.take()
        t0 = time.perf_counter()
        jax.block_until_ready(self.pipeline.optimise(self.state, iterations=num)["image"])
        wall = time.perf_counter() - t0
        return {"wall": wall, "compile": self.clock.take()}

    def one_evaluation(self, reps: int) -> float:
        s = self.state
        jax.block_until_ready(self.eval_fn(s["image"], s["net"], s["targets"]))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(self.eval_fn(s["image"], s["net"], s["targets"]))
            times.append(time.perf_counter() - t0)
        return median(times)

    def features(self, layer: str) -> np.ndarray:
        x = to_model(self.pipeline.content[None])
        return np.asarray(vgg.activations(self.state["net"], x, (layer,))[layer])


def transposed_kernel_convolutions(compiled) -> tuple[int, int]:
    """(convolutions whose kernel XLA reads transposed, ``dim_labels=..._01oi->...``, all
    convolutions) in a compiled program: XLA:CPU runs the canonical ``01io`` ones fast."""
    convs = [line for line in compiled.as_text().splitlines() if " convolution(" in line]
    return sum("_01oi->" in line for line in convs), len(convs)


def closest_iterations(per_iteration: np.ndarray, target: int) -> int:
    """The number of iterations whose evaluations (cumulative) come closest to ``target`` (the
    fewer on a tie)."""
    cum = np.cumsum(per_iteration)
    return int(np.argmin(np.abs(cum - target))) + 1


# ----------------------------------------------------------------------------- main


def fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv):
    del argv
    size, steps = _SIZE.value, _STEPS.value
    if size < 16 or size % 4:
        raise SystemExit(f"error: --size must be a multiple of 4 and at least 16, got {size}")
    if steps < 1 or _REPEATS.value < 1 or _EVALS.value < 1:
        raise SystemExit("error: --steps, --repeats and --evals must be at least 1")
    info = machine()
    torch.set_num_threads(info["cores"])
    info["torch_threads"] = torch.get_num_threads()
    clock = CompileClock()

    tmp = tempfile.TemporaryDirectory()
    if _WEIGHTS.value:
        weights, random_weights = Path(_WEIGHTS.value).expanduser(), False
    else:
        weights, random_weights = write_random_vgg19(Path(tmp.name), _SEED.value), True
    try:
        params = vgg.load_vgg(weights)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    arch = vgg.architecture_of(params)
    if random_weights:
        what = f"VGG-19 with seeded random weights (seed {_SEED.value}, He-normal kernels)"
    else:
        what = f"{arch.upper()} from {weights.name}"

    content = style_images.resize(style_images.load_image(CONTENT), size, size)
    style = style_images.resize(style_images.load_image(STYLE), size, size)

    print(
        f"{info['cpu']}, {info['cores']} cores; jax {info['jax']} ({info['backend']}, its "
        f"default thread pool); torch {info['torch']} ({info['torch_threads']} threads); "
        f"load average {info['load_average_at_start']:.2f}",
        flush=True,
    )
    print(f"weights: {what}", flush=True)
    if random_weights:
        print(
            "  (random weights: the speed does not depend on their values, the stylised image "
            "does; pass --weights=FILE for the published ones)",
            flush=True,
        )
    print(
        f"images: {CONTENT} (content) and {STYLE} (style), both {size}x{size}; content layer "
        f"{CONTENT_LAYERS[0]}, style layers {', '.join(STYLE_LAYERS)} (the tutorial's "
        f"{tutorial_name(CONTENT_LAYERS[0])} and "
        f"{', '.join(tutorial_name(n) for n in STYLE_LAYERS)})",
        flush=True,
    )

    log("torch: building the tutorial's model")
    ts = TorchSide(params, content, style)
    log("jaxgen: building the pipeline, compiling init and one loss-and-gradient evaluation")
    js = JaxgenSide(weights, content, style, clock)
    ours, theirs = js.features(STYLE_LAYERS[-1]), ts.features(STYLE_LAYERS[-1])
    feature_error = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))
    log(f"same network: max |jaxgen - torch| / max |torch| of conv3_1 = {feature_error:.1e}")
    if feature_error > 1e-3:
        raise SystemExit(f"error: the two networks differ (relative error {feature_error:.1e})")

    # The first torch run sets the number of evaluations jaxgen is given.
    log(f"torch: the tutorial's loop, num_steps={steps}")
    torch_runs = [ts.run(steps)]
    target = torch_runs[0]["evaluations"]
    log(
        f"torch: {target} evaluations, {torch_runs[0]['iterations']} L-BFGS iterations in "
        f"{torch_runs[0]['seconds']:.1f} s"
    )
    pause()
    # An iteration of optax's L-BFGS costs at least one evaluation, the first one more (it also
    # evaluates the start): target - 1 iterations, unless the line search takes more.
    count = max(target - 1, 1)
    log(f"jaxgen: counting the evaluations of {count} iterations")
    first = js.run(count)
    log(
        f"jaxgen: {count} iterations made {first['evaluations']} evaluations "
        f"({first['seconds']:.1f} s; compiled in {js.loop_compile_s[count]:.1f} s)"
    )
    num = closest_iterations(first["per_iteration"], target)
    jax_runs = []
    for r in range(_REPEATS.value):
        if r:
            pause()
            log("torch: the tutorial's loop")
            torch_runs.append(ts.run(steps))
        pause()
        log(f"jaxgen: {num} iterations (compiled loop)")
        jax_runs.append(js.run(num))
        log(f"jaxgen: {jax_runs[-1]['evaluations']} evaluations, {jax_runs[-1]['seconds']:.1f} s")

    log("one loss-and-gradient evaluation, each side")
    one_j = js.one_evaluation(_EVALS.value)
    pause()
    one_t = ts.one_evaluation(_EVALS.value)

    log("jaxgen: a plain lax.scan of gradient steps around the same evaluation")
    plain = js.plain_scan(5)
    plain_ratio = plain["seconds"] / plain["evaluations"] / one_j
    oi_loop = transposed_kernel_convolutions(js.loop(num))
    oi_eval = transposed_kernel_convolutions(js.eval_fn)

    entry = None
    if _OPTIMISE.value:
        log("jaxgen: pipeline.optimise (the library's entry point), twice for 1 iteration")
        again = [js.optimise(1), js.optimise(1)]
        log(f"jaxgen: pipeline.optimise, {num} iterations")
        entry = js.optimise(num)
        entry["recompiles"] = again[1]["compile"] > 0.5 * again[0]["compile"]
        entry["second_call_compile"] = again[1]["compile"]
    final_j = js.final_loss(jax_runs[-1]["image"])

    t_evals = torch_runs[0]["evaluations"]
    j_evals = jax_runs[0]["evaluations"]
    t_s = median([r["seconds"] for r in torch_runs])
    j_s = median([r["seconds"] for r in jax_runs])
    rows = [
        {
            "contender": "jaxgen, compiled loop",
            "iterations": num,
            "evaluations": j_evals,
            "seconds": j_s,
            "one_evaluation": one_j,
            "compile": js.loop_compile_s[num],
        }
    ]
    if entry is not None:
        rows.append(
            {
                "contender": "jaxgen, pipeline.optimise()",
                "iterations": num,
                "evaluations": j_evals,
                "seconds": entry["wall"] - entry["compile"],
                "one_evaluation": one_j,
                "compile": entry["compile"],
            }
        )
    rows.append(
        {
            "contender": "torch, the tutorial",
            "iterations": torch_runs[0]["iterations"],
            "evaluations": t_evals,
            "seconds": t_s,
            "one_evaluation": one_t,
            "compile": None,
        }
    )
    for row in rows:
        row["per_evaluation"] = row["seconds"] / row["evaluations"]
        row["overhead"] = row["per_evaluation"] / row["one_evaluation"]
        row["gflop_per_s"] = js.eval_flops / row["one_evaluation"] / 1e9

    print()
    print(
        "| contender | L-BFGS iterations | evaluations | loop s | s / evaluation | "
        "one evaluation s | loop / (evaluations x one) | compile s | one evaluation GFLOP/s |"
    )
    print("|---|" + "---:|" * 8)
    for row in rows:
        cells = [
            row["contender"],
            str(row["iterations"]),
            str(row["evaluations"]),
            fmt(row["seconds"], 2),
            fmt(row["per_evaluation"], 4),
            fmt(row["one_evaluation"], 4),
            fmt(row["overhead"], 3),
            fmt(row["compile"], 2),
            fmt(row["gflop_per_s"], 1),
        ]
        print("| " + " | ".join(cells) + " |")
    per_eval_ratio = rows[-1]["per_evaluation"] / rows[0]["per_evaluation"]
    total_ratio = t_s / j_s
    print()
    if t_evals == j_evals:
        print(
            f"ratio (torch time / jaxgen time), {t_evals} evaluations each: {total_ratio:.3f}"
            "  (> 1: jaxgen is faster)"
        )
    else:
        print(
            f"ratio (torch time / jaxgen time): {total_ratio:.3f} for {t_evals} vs {j_evals} "
            f"evaluations; per evaluation {per_eval_ratio:.3f}  (> 1: jaxgen is faster)"
        )
    goal = rows[0]["overhead"]
    print(
        f"jaxgen compiled loop / ({j_evals} x one evaluation): {goal:.3f}  goal <= 1.10  "
        f"{'ok' if goal <= 1.10 else 'MISS'}"
    )
    one_ratio = one_t / one_j
    print(f"one evaluation, torch / jaxgen: {one_ratio:.3f}")
    print(
        f"one evaluation: {js.eval_flops / 1e9:.2f} GFLOP (XLA's count; GFLOP/s of both sides "
        "use it)"
    )
    if entry is not None:
        rec = "compiles again on every call" if entry["recompiles"] else "reuses its compilation"
        print(
            f"pipeline.optimise {rec}: a second call with the same arguments spent "
            f"{entry['second_call_compile']:.2f} s compiling"
        )
    times = ", ".join(f"{r['seconds']:.2f}" for r in jax_runs)
    print(
        f"jaxgen runs: {times} s; first run of the {count}-iteration counting loop "
        f"{first['seconds']:.2f} s for {first['evaluations']} evaluations"
    )
    times = ", ".join(f"{r['seconds']:.2f}" for r in torch_runs)
    print(f"torch runs: {times} s")
    info["load_average_at_end"] = load_average()
    print(
        f"1-minute load average at the start {info['load_average_at_start']:.2f}, at the end "
        f"{info['load_average_at_end']:.2f}, on {info['cores']} cores (above the cores: other "
        "work shared the CPU and the timings are not to be trusted)"
    )
    print(
        f"jaxgen iterations with more than one evaluation: "
        f"{int(np.sum(jax_runs[0]['per_iteration'] > 1))} of {num} (the first iteration also "
        "evaluates the start)"
    )
    print(
        f"jaxgen, a plain lax.scan of {plain['evaluations']} gradient steps (no L-BFGS): "
        f"{plain['seconds'] / plain['evaluations']:.4f} s per evaluation = {plain_ratio:.3f} x "
        "one evaluation"
    )
    print(
        f"convolutions reading their kernel transposed (dim_labels ..._01oi): "
        f"{oi_loop[0]} of {oi_loop[1]} in the compiled loop, {oi_eval[0]} of {oi_eval[1]} in "
        "one evaluation"
    )
    final_t = torch_runs[0]["final_loss"]
    print()
    print("final losses (for the record only: the two normalise their losses differently)")
    print("| contender | total | content | style |")
    print("|---|---:|---:|---:|")
    for name, loss in (("jaxgen", final_j), ("torch", final_t)):
        cells = [f"{loss[k]:.4g}" for k in ("total", "content", "style")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"(jaxgen: content_weight {js.pipeline.loss.content_weight:g} x 1/2 sum (F - P)^2 + "
        f"style_weight {js.pipeline.loss.style_weight:g} x mean_l E_l, "
        f"tv_weight {js.pipeline.loss.tv_weight:g}; torch: {CONTENT_WEIGHT:g} x MSE of features "
        f"+ {STYLE_WEIGHT:g} x sum_l MSE of Gram / (a b c d); the tutorial's losses read the "
        "convolutions before their ReLU, jaxgen's after; torch clamps the image to [0, 1] "
        "before each evaluation, jaxgen does not)",
        flush=True,
    )

    results = {
        "machine": info,
        "size": size,
        "steps": steps,
        "weights": "random" if random_weights else str(weights),
        "arch": arch,
        "feature_relative_error": feature_error,
        "rows": rows,
        "torch_over_jaxgen_time": total_ratio,
        "torch_over_jaxgen_per_evaluation": per_eval_ratio,
        "torch_over_jaxgen_one_evaluation": one_ratio,
        "jaxgen_loop_over_evaluations": goal,
        "eval_gflop": js.eval_flops / 1e9,
        "plain_scan_over_evaluations": plain_ratio,
        "transposed_kernel_convolutions": {"loop": list(oi_loop), "one_evaluation": list(oi_eval)},
        "counting_run": {"iterations": count, "evaluations": first["evaluations"]},
        "jaxgen_seconds": [r["seconds"] for r in jax_runs],
        "torch_seconds": [r["seconds"] for r in torch_runs],
        "final_loss": {"jaxgen": final_j, "torch": final_t},
    }
    if entry is not None:
        results["optimise_recompiles"] = bool(entry["recompiles"])
    tmp.cleanup()
    if _JSON_OUT.value:
        Path(_JSON_OUT.value).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {_JSON_OUT.value}")


if __name__ == "__main__":
    app.run(main)
