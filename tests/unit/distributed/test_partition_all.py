"""The test-only switch that makes ZeRO-3 partition every parameter (engines.PARTITION_ALL_ENV): on, a stage 3 config
gets persistence threshold 0 unless it sets one; off (every real run), the configs reach DeepSpeed as built, with its
default threshold. tests/distributed/test_zero3_student.py checks on 2 ranks that no parameter then stays whole."""

from ard_scale.distributed.engines import PARTITION_ALL_ENV, frozen_ds_config, partition_all_in_tests, student_ds_config


def test_on_every_stage_3_config_partitions_every_parameter(monkeypatch):
    monkeypatch.setenv(PARTITION_ALL_ENV, "1")
    for config in (student_ds_config(micro_batch=2), frozen_ds_config(micro_batch=2)):
        zero = partition_all_in_tests(config)["zero_optimization"]
        assert zero["stage3_param_persistence_threshold"] == 0 and zero["stage"] == 3
        assert "stage3_param_persistence_threshold" not in config["zero_optimization"]  # a copy, not an edit
    own = student_ds_config(micro_batch=2)
    own["zero_optimization"]["stage3_param_persistence_threshold"] = 100  # a test that sets its own keeps it
    assert partition_all_in_tests(own)["zero_optimization"]["stage3_param_persistence_threshold"] == 100
    stage2 = student_ds_config(micro_batch=2, zero_stage=2)
    assert partition_all_in_tests(stage2) == stage2  # no ZeRO-3 parameters to partition


def test_off_real_runs_keep_deepspeeds_defaults(monkeypatch):
    monkeypatch.delenv(PARTITION_ALL_ENV, raising=False)
    config = student_ds_config(micro_batch=2)
    assert partition_all_in_tests(config) == config
    monkeypatch.setenv(PARTITION_ALL_ENV, "0")
    assert partition_all_in_tests(frozen_ds_config(micro_batch=2)) == frozen_ds_config(micro_batch=2)
