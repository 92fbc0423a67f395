"""Typed recipe tree, strict YAML loading with dotted overrides, and one ConfigError listing every problem."""

from ard_scale.config.ard import ARDConfig
from ard_scale.config.loader import ConfigError, diff_configs, dump_yaml, to_dict
from ard_scale.config.models import DiffusionConfig, TeacherConfig, TextEncoderConfig, VAEConfig
from ard_scale.config.schema import (
    NOT_HASHED,
    ConfigWarning,
    DataConfig,
    RootConfig,
    config_from_dict,
    config_hash,
    load_config,
    recipe_changes,
    schedule_moved,
    training_dict,
    with_defaults,
)
from ard_scale.config.training import CheckpointConfig, EvalConfig, GANConfig, LogConfig, TrainConfig, ZeroConfig

__all__ = [
    "ARDConfig",
    "CheckpointConfig",
    "ConfigError",
    "ConfigWarning",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "GANConfig",
    "LogConfig",
    "NOT_HASHED",
    "RootConfig",
    "TeacherConfig",
    "TextEncoderConfig",
    "TrainConfig",
    "VAEConfig",
    "ZeroConfig",
    "config_from_dict",
    "config_hash",
    "diff_configs",
    "dump_yaml",
    "load_config",
    "recipe_changes",
    "schedule_moved",
    "to_dict",
    "training_dict",
    "with_defaults",
]
