"""jaxgen: classic text-to-image models in JAX/Flax, from a laptop CPU to a TPU slice."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "tensorflow-datasets>=4.9.9",
    "array_record>=0.8",
    "ml_collections>=1.1",
    "chex>=0.1.90",
    "numpy>=2.0",
    "scipy>=1.13",
    "pillow>=10",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "absl-py>=2.1",
    "scikit-learn>=1.5",
    # Style transfer's default images ship inside its wheel (skimage.data).
    "scikit-image>=0.22",
    "h5py>=3.10",
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",
        "hypothesis>=6.100",
        "nbformat>=5.10",
        "nbclient>=0.10",
        "ipykernel>=6.29",
        "ruff>=0.8",
        "import-linter>=2.1",
        "safetensors>=0.4",
        # The demo's tests drive the page in a system Chromium (nothing downloads a browser).
        "gradio>=5.0",
        "playwright>=1.45",
    ],
    # The local web demo (python -m jaxgen.demo).
    "demo": ["gradio>=5.0"],
    # Side-by-side speed comparisons with PyTorch peers. torch==2.13.0 is a CPU build.
    "bench": ["torch==2.13.0", "diffusers>=0.30"],
    # Preparing TFDS datasets (download_and_prepare) needs TensorFlow; reading them does not.
    "tfds-build": ["tensorflow-cpu>=2.16"],
}

setup(
    name="jaxgen",
    version="0.1.0",
    description="Classic text-to-image models (DDPM, GAN-INT-CLS, VQGAN, DALL-E, ...) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["jaxgen", "jaxgen.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
