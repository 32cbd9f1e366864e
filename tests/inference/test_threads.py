"""The scheduler's choice of torch threads (inference/threads.py), fed step times directly."""

import threading

import torch

from inference import EngineConfig, load_engine
from inference import engine as engine_module
from inference.loading import load_model
from inference.threads import EVERY, TRIAL, ThreadChooser


def settle(chooser: ThreadChooser, seconds: float, rows: int = 1) -> int:
    """Run the current count until a trial of the other one starts; returns the steps it took."""
    for step in range(1, EVERY + 1):
        chooser.record(rows, seconds)
        if chooser.trying is not None:
            return step
    raise AssertionError(f"no trial within {EVERY} steps")


def test_the_first_trial_comes_early_and_later_ones_every_so_many_steps():
    chooser = ThreadChooser((1, 2))
    assert settle(chooser, 0.010) == TRIAL
    for _ in range(TRIAL):
        chooser.record(1, 0.0095)
    assert chooser.trying is None
    assert settle(chooser, 0.010) == EVERY


def test_it_starts_at_one_thread_and_keeps_a_clearly_faster_count():
    chooser = ThreadChooser((1, 2))
    assert chooser.current == 1 and chooser.trying is None
    settle(chooser, 0.010)
    assert chooser.trying == 2
    for _ in range(TRIAL):
        chooser.record(1, 0.007)
    assert chooser.current == 2 and chooser.trying is None and chooser.switches == 1
    settle(chooser, 0.007)
    assert chooser.trying == 1


def test_a_stalled_step_after_winning_goes_back_to_one_thread():
    chooser = ThreadChooser((1, 2))
    settle(chooser, 0.010)
    for _ in range(TRIAL):
        chooser.record(1, 0.007)
    assert chooser.current == 2
    chooser.record(1, 0.008)
    assert chooser.current == 2
    chooser.record(1, 0.100)
    assert chooser.current == 1 and chooser.trying is None


def test_a_slower_or_barely_faster_trial_changes_nothing():
    chooser = ThreadChooser((1, 2))
    settle(chooser, 0.010)
    for _ in range(TRIAL):
        chooser.record(1, 0.0095)
    assert chooser.current == 1 and chooser.trying is None and chooser.switches == 0


def test_a_collapsing_trial_ends_at_its_first_slow_step():
    chooser = ThreadChooser((1, 2))
    settle(chooser, 0.010)
    chooser.record(1, 0.200)
    assert chooser.trying is None and chooser.current == 1


def test_a_trial_ends_when_the_batch_size_changes():
    chooser = ThreadChooser((1, 2))
    settle(chooser, 0.010)
    chooser.record(1, 0.005)
    chooser.record(3, 0.005)
    assert chooser.trying is None and chooser.current == 1 and chooser.trials == 1


def test_apply_sets_the_calling_threads_count():
    chooser = ThreadChooser((1, 2))
    seen = []

    def run() -> None:
        torch.set_num_threads(2)
        chooser.apply()
        seen.append(torch.get_num_threads())
        settle(chooser, 0.010)
        chooser.apply()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [1, 2]


def test_the_model_loads_on_one_thread_and_the_count_is_restored(tiny_model_dir, tmp_path, monkeypatch):
    # A second OpenMP team, made by a loading thread, would keep the scheduler's
    # threads from spinning (inference/threads.py): loading uses one thread.
    seen = []

    def recording(config):
        seen.append(torch.get_num_threads())
        return load_model(config)

    monkeypatch.setattr(engine_module, "load_model", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", cache_dir=tmp_path, num_threads=1)
    engine = load_engine(config)
    try:
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        engine.close()
        torch.set_num_threads(before)
