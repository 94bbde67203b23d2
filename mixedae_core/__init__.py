"""MixedAE (Chen et al., CVPR 2023) reproduced at small scale: MAE, MAE + naive mixing and MixedAE."""
from .config import ModelConfig
from .model import (MaskedAutoencoderViT, MixedAutoencoderViT, ModelOutput, OfficialMAE, build_mae, build_model,
                    encoder_state_dict, timm_encoder)

__all__ = ["MaskedAutoencoderViT", "MixedAutoencoderViT", "ModelConfig", "ModelOutput", "OfficialMAE", "build_mae", "build_model",
           "encoder_state_dict", "timm_encoder"]
