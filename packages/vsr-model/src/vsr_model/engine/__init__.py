"""Search engines: one interface (`SearchEngine`), two families (dual encoder; HF embedding VLM)."""

from vsr_model.engine.base import Hit, SearchEngine
from vsr_model.engine.dual import DualEncoderConfig, DualEncoderEngine
from vsr_model.engine.vlm import VLMEmbeddingConfig, VLMEmbeddingEngine

__all__ = [
    "DualEncoderConfig",
    "DualEncoderEngine",
    "Hit",
    "SearchEngine",
    "VLMEmbeddingConfig",
    "VLMEmbeddingEngine",
]
