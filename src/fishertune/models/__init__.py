"""Vision-foundation-model segmentors: timm ViT backbones, multi-scale neck, heads (§2)."""
