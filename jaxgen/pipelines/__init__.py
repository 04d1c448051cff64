"""Registry of pipelines: ``config.pipeline`` names one of them."""

import importlib

from jaxgen.pipelines.base import Pipeline

# name -> "module:Class"; imported lazily so one family's dependencies never load for another.
PIPELINES = {
    "clip": "jaxgen.pipelines.clip:CLIPPipeline",
    "dalle": "jaxgen.pipelines.dalle:DALLEPipeline",
    "ddpm": "jaxgen.pipelines.ddpm:DDPMPipeline",
    "fast_style_transfer": "jaxgen.pipelines.style_transfer:FastStyleTransferPipeline",
    "dvae": "jaxgen.pipelines.autoencoder:AutoencoderPipeline",
    "gan": "jaxgen.pipelines.gan_int_cls:GANINTCLSPipeline",
    "gan_int_cls": "jaxgen.pipelines.gan_int_cls:GANINTCLSPipeline",
    "style_transfer": "jaxgen.pipelines.style_transfer:StyleTransferPipeline",
    "text2scene": "jaxgen.pipelines.text2scene:Text2ScenePipeline",
    "unclip": "jaxgen.pipelines.unclip:UnCLIPPipeline",
    "vae": "jaxgen.pipelines.autoencoder:AutoencoderPipeline",
    "vqgan": "jaxgen.pipelines.autoencoder:AutoencoderPipeline",
    "vqvae": "jaxgen.pipelines.autoencoder:AutoencoderPipeline",
}


def get_pipeline_class(name: str) -> type[Pipeline]:
    """Returns the pipeline class registered under ``name``."""
    if name not in PIPELINES:
        raise ValueError(
            f"Unknown pipeline {name!r}. Valid pipelines: {', '.join(sorted(PIPELINES))}."
        )
    module_name, class_name = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_pipeline(config, load_run=None) -> Pipeline:
    """Constructs the pipeline named by ``config.pipeline`` from the whole config.

    ``load_run(workdir)`` loads a trained run the pipeline builds on (``Pipeline.load_run``);
    ``jaxgen.training.workdir.build_pipeline`` passes the training layer's loader.
    """
    return get_pipeline_class(config.pipeline)(config, load_run)
