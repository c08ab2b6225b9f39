"""flash-edge: few-step SD3.5-family text-to-image on phones and laptops.

The runtime (``FlashPipeline``, ``flash_edge.runtimes``, bundles) needs numpy, pillow and tokenizers only;
torch, diffusers and transformers are needed to load diffusers folders, to export, and for the torch backend.
"""

__version__ = "0.1.0"

__all__ = ["FlashPipeline", "__version__"]


def __getattr__(name):  # lazy, so `import flash_edge` stays cheap
    if name == "FlashPipeline":
        from .pipeline import FlashPipeline

        return FlashPipeline
    raise AttributeError(name)
