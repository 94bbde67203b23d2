"""MixedAE (Chen et al., CVPR 2023) reproduced at small scale: MAE, MAE + naive mixing and MixedAE."""
from .model import (MaskedAutoencoderViT, MixedAutoencoderViT, ModelConfig, ModelOutput, build_mae, build_model,
                    encoder_state_dict, timm_encoder)

__all__ = ["MaskedAutoencoderViT", "MixedAutoencoderViT", "ModelConfig", "ModelOutput", "build_mae", "build_model",
           "encoder_state_dict", "timm_encoder"]
