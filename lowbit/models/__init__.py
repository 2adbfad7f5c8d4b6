from lowbit.models.build import LowbitModel, ModelConfig, build_model

__all__ = ["LowbitModel", "ModelConfig", "build_model"]
