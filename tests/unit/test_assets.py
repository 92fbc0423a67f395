"""python -m ard_scale.assets: debug folders the path-based recipe keys load, equal to the named debug sizes."""

import torch

from ard_scale.assets import main
from ard_scale.config import load_config
from ard_scale.config.paths import missing_paths
from ard_scale.models.teachers import build_teacher
from ard_scale.models.text_encoder import build_clip, build_qwen, encode_pooled, encode_qwen
from ard_scale.trainer.build import build_codec_for, build_conditioner, build_teacher_model


def test_debug_assets_load_through_the_recipe_paths_and_equal_the_named_sizes(tmp_path):
    folders = main([str(tmp_path)])
    paths = [
        "teacher.size=null", f"teacher.path={folders['flux']}",
        "text_encoder.size=null", f"text_encoder.path={folders['t5']}",
        "pooled_encoder.size=null", f"pooled_encoder.path={folders['clip']}",
        "vae.size=null", f"vae.path={folders['vae']}",
    ]  # fmt: skip
    cfg = load_config("recipes/tiny_flux_cpu.yaml", paths)
    assert missing_paths(cfg) == []
    teacher = build_teacher_model(cfg)
    reference = build_teacher("flux", "debug", seed=0)
    for (name, p), q in zip(teacher.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    captions = ["a handwritten digit seven"]
    cond, _ = build_conditioner(cfg, teacher)({"captions": captions})
    clip, tokenizer = build_clip("debug", seed=0)
    torch.testing.assert_close(cond.pooled, encode_pooled(clip, tokenizer, captions, max_length=16))
    assert cond.text.shape == (1, 8, 24)
    codec = build_codec_for(cfg, teacher)
    assert codec.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 8, 8)

    # Qwen-Image: teacher, Qwen2.5-VL and AutoencoderKLQwenImage folders through their recipe keys
    paths = [
        "teacher.size=null", f"teacher.path={folders['qwen_image']}",
        "qwen_encoder.size=null", f"qwen_encoder.path={folders['qwen']}",
        "vae.size=null", f"vae.path={folders['vae_qwen_image']}",
    ]  # fmt: skip
    cfg = load_config("recipes/tiny_qwen_image_cpu.yaml", paths)
    assert missing_paths(cfg) == []
    teacher = build_teacher_model(cfg)
    reference = build_teacher("qwen_image", "debug", seed=0)
    for (name, p), q in zip(teacher.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    cond, _ = build_conditioner(cfg, teacher)({"captions": captions})
    qwen, qwen_tokenizer = build_qwen("debug", seed=0)
    ref = encode_qwen(qwen, qwen_tokenizer, captions, max_length=16)
    assert torch.equal(cond.text, ref.tokens) and torch.equal(cond.text_mask, ref.mask)
    codec = build_codec_for(cfg, teacher)
    assert type(codec.vae).__name__ == "AutoencoderKLQwenImage"
    assert codec.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 8, 8)
