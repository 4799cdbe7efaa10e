"""Run logs after a resume: metrics.jsonl and TensorBoard tell the same history."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dreamctl.runs.metrics import MetricsLogger, read_jsonl


def _tensorboard_steps(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_a_resume_keeps_the_values_logged_at_its_checkpoints_step_in_both_logs(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in (10, 20, 30):
        logger.scalars(step, {"loss/model": float(step)})
    logger.close()
    logger = MetricsLogger(tmp_path, resume_step=20)  # the checkpoint at step 20; step 30 is redone
    logger.scalars(30, {"loss/model": 31.0})
    logger.close()
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    assert _tensorboard_steps(tmp_path, "loss/model") == [10, 20, 30]
