"""DualOpt's control flow, driven by scripted evaluation accuracies."""
import copy
import logging

import pytest
import torch
import torch.nn as nn

from engine.config import RunConfig
from engine.results import BEST, LAST, read_metrics
from engine.trainer import ProtocolState, fit, record_epoch


def drive(accuracies, patience, max_epochs=None):
    """Feed accuracies until the protocol stops; return the state and the action of each epoch."""
    state, actions = ProtocolState(), []
    for accuracy in accuracies:
        _, action = record_epoch(state, accuracy, patience, max_epochs)
        actions.append(action)
        if action == "stop":
            break
    return state, actions


def test_switch_after_exactly_patience_epochs_without_improvement():
    state, actions = drive([10, 20, 30, 25, 30, 29] + [31] + [31, 30, 31, 50], patience=3)
    # Epochs 4, 5, 6 bring nothing above 30 (equal is no improvement): switch after epoch 6, not 5.
    assert actions[:6] == ["continue"] * 5 + ["switch"]
    assert state.switch_epoch == 6
    # SGD: epoch 7 beats the best of both phases (31 > 30); 8, 9, 10 do not: stop after 10; 50 never seen.
    assert actions[6:] == ["continue", "continue", "continue", "stop"]
    assert (state.epoch, state.best_acc, state.best_epoch, state.best_phase) == (10, 31, 7, "sgd")
    assert state.stop_reason == "patience"


def test_sgd_phase_must_beat_the_adamw_best():
    state, actions = drive([50, 40, 40, 45, 49, 50, 48], patience=2)
    assert actions == ["continue", "continue", "switch", "continue", "stop"]
    assert (state.best_acc, state.best_epoch, state.best_phase, state.switch_epoch) == (50, 1, "adamw", 3)


def test_max_epochs_caps_both_phases():
    state, actions = drive([1, 2, 3, 4, 5, 6], patience=10, max_epochs=4)
    assert actions == ["continue"] * 3 + ["stop"]
    assert (state.epoch, state.stop_reason, state.best_acc) == (4, "max_epochs", 4)


def test_diverged_weights_end_their_phase_at_once_and_are_never_the_best():
    def drive_diverging(accuracies, diverged_at, patience):
        state, actions = ProtocolState(), []
        for epoch, accuracy in enumerate(accuracies, start=1):
            improved, action = record_epoch(state, accuracy, patience, None, diverged=epoch in diverged_at)
            actions.append((improved, action))
            if action == "stop":
                break
        return state, actions

    # AdamW diverges at epoch 3 (its chance accuracy, 40, above the best, is no best): switch there, not after
    # epoch 7; SGD improves at 4, then diverges at 5: stop there, the best that of epoch 4.
    state, actions = drive_diverging([20, 30, 40, 35, 90], diverged_at={3, 5}, patience=5)
    assert actions == [(True, "continue"), (True, "continue"), (False, "switch"), (True, "continue"),
                       (False, "stop")]
    assert (state.switch_epoch, state.best_epoch, state.best_acc, state.stop_reason) == (3, 4, 35, "diverged")
    # diverged before any best: nothing to go back to, so the epoch counts as any other
    state, actions = drive_diverging([10, 20], diverged_at={1}, patience=5)
    assert actions == [(True, "continue"), (True, "continue")] and state.phase == "adamw"


def test_fit_goes_back_to_the_best_weights_when_training_diverges(tmp_path, caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = TensorBatches(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    config = RunConfig(backbone="toy", data="toy", dataset="toy", data_path=".", image_size=(2, 2), augment=False,
                       patience=10, max_epochs=4, out=str(tmp_path))
    evaluation, training = ScriptedEvaluation([30, 40, 33, 20]), RecordingTraining()

    def diverging_at_epoch_2(model, batches, optimizer, precision, epoch, *args):
        row = training(model, batches, optimizer, precision, epoch, *args)
        if epoch == 2:  # as a learning rate too high for the model would leave it
            with torch.no_grad():
                model[1].weight.fill_(float("nan"))
            row["train_loss"] = float("nan")
        return row

    with caplog.at_level(logging.INFO, logger="engine"):
        outcome = fit(model, batches, batches, config, tmp_path, evaluate_fn=evaluation,
                      train_fn=diverging_at_epoch_2, progress="off")
    messages = [record.getMessage() for record in caplog.records]
    assert "epoch 2: the weights are no longer finite (training loss nan)" in messages
    assert any("the weights diverged: reloaded epoch 1, switching to SGD" in message for message in messages)
    assert (outcome.state.switch_epoch, outcome.state.best_epoch, outcome.state.best_acc) == (2, 3, 33)
    sgd_start_weights = training.starts[2][0]
    for key, value in evaluation.weights_at_eval[0].items():  # SGD starts from epoch 1's finite weights
        assert torch.equal(sgd_start_weights[key], value)


class ScriptedEvaluation:
    """Stands in for `evaluate`: returns the scripted accuracy of each epoch, and remembers the weights."""

    def __init__(self, accuracies):
        self.accuracies = list(accuracies)
        self.weights_at_eval = []

    def __call__(self, model, batches, precision, device):
        self.weights_at_eval.append(copy.deepcopy(model.state_dict()))
        return self.accuracies[len(self.weights_at_eval) - 1]


class RecordingTraining:
    """Wraps `train_one_epoch`, remembering the weights and optimizer each epoch starts with."""

    def __init__(self):
        from engine.trainer import train_one_epoch
        self.train = train_one_epoch
        self.starts = []

    def __call__(self, model, batches, optimizer, *args):
        self.starts.append((copy.deepcopy(model.state_dict()), optimizer, len(optimizer.state)))
        return self.train(model, batches, optimizer, *args)


class TensorBatches:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return 2

    def epoch(self, epoch):
        yield from zip(self.images.chunk(2), self.labels.chunk(2))


def test_fit_reloads_best_weights_into_a_fresh_sgd(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = TensorBatches(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    config = RunConfig(backbone="toy", data="toy", dataset="toy", data_path=".", image_size=(2, 2), augment=False,
                       patience=2, out=str(tmp_path))
    evaluation = ScriptedEvaluation([10, 30, 20, 25, 28, 35, 31, 33])
    training = RecordingTraining()
    outcome = fit(model, batches, batches, config, tmp_path, evaluate_fn=evaluation, train_fn=training,
                  progress="off")

    # AdamW: best at epoch 2, epochs 3-4 bring nothing: switch after epoch 4. SGD: epoch 6 is a new best
    # (35), 7-8 are not: stop after 8.
    assert (outcome.state.switch_epoch, outcome.state.epoch) == (4, 8)
    assert (outcome.state.best_acc, outcome.state.best_epoch, outcome.state.best_phase) == (35, 6, "sgd")
    first_sgd_weights, first_sgd_optimizer, first_sgd_state_size = training.starts[4]
    for key, value in evaluation.weights_at_eval[1].items():  # the weights evaluated at epoch 2
        assert torch.equal(first_sgd_weights[key], value)
    assert isinstance(first_sgd_optimizer, torch.optim.SGD) and first_sgd_state_size == 0
    assert first_sgd_optimizer.defaults["lr"] == 1e-3 and first_sgd_optimizer.defaults["momentum"] == 0.9
    assert all(isinstance(opt, torch.optim.AdamW) for _, opt, _ in training.starts[:4])

    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert [r["phase"] for r in rows] == ["adamw"] * 4 + ["sgd"] * 4
    best = torch.load(tmp_path / BEST)
    assert best["epoch"] == 6 and best["eval_acc"] == 35
    for key, value in evaluation.weights_at_eval[5].items():
        assert torch.equal(best["model"][key], value)
    assert (tmp_path / LAST).exists()


class EvalBatches:
    """Three evaluation batches of 4, 4 and 2 images (a partial tail), labels 0..2."""
    batch_size = 4

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(10, 3, 8, 8, generator=generator).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, 3, (10,), generator=generator)

    def epoch(self, epoch):
        for start in range(0, 10, 4):  # new tensors made under evaluate's inference_mode, as a loader's are
            yield self.images[start:start + 4].clone(), self.labels[start:start + 4].clone()


def test_evaluation_pads_the_tail_so_a_compiled_model_compiles_once():
    from engine.trainer import evaluate, make_precision

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    shapes = []

    def counting_backend(graph, example_inputs):  # called once per compilation
        shapes.append(tuple(example_inputs[0].shape) if example_inputs else None)
        return graph.forward

    batches, precision = EvalBatches(), make_precision("fp32", "cpu")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend)
    accuracy = evaluate(compiled, batches, precision, torch.device("cpu"))
    assert len(shapes) == 1
    with torch.no_grad():  # the reference: every image alone through the eager model, no padding anywhere
        predictions = torch.cat([model(image[None]).argmax(1) for image in batches.images])
    assert accuracy == pytest.approx(100.0 * (predictions == batches.labels).float().mean().item())


def test_every_training_and_evaluation_step_tells_cuda_graphs_a_new_step_begins(monkeypatch):
    """Under --compile-mode reduce-overhead, a replay overwrites the last one's outputs: each step says it begins,
    or the last step's logits (still referenced until reassigned) would make every replay record anew."""
    from engine.trainer import evaluate, make_precision, train_one_epoch

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append("step"))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    precision = make_precision("fp32", "cpu")
    train_batches = TensorBatches(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)))
    train_one_epoch(model, train_batches, torch.optim.AdamW(model.parameters()), precision, 1, torch.device("cpu"),
                    "off")
    assert len(marks) == 2  # two training batches
    evaluate(model, EvalBatches(), precision, torch.device("cpu"))
    assert len(marks) == 2 + 3  # and three evaluation batches


def test_a_long_epoch_in_a_log_file_says_how_far_it_is(monkeypatch, caplog):
    """Without a terminal (a grid cell's log, Slurm) a bar would be silent: a line every REFRESH_S["lines"]
    seconds (a minute; here every step) names the step, the rate, the running loss and the time left."""
    from engine import progress, trainer

    monkeypatch.setattr(trainer.EpochProgress, "REFRESH_S", {"bar": 0.5, "lines": 0.0})
    monkeypatch.setattr(trainer.sys.stderr, "isatty", lambda: False, raising=False)
    assert trainer.progress_mode(is_main=True) == "lines" and trainer.progress_mode(is_main=False) == "off"
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = TensorBatches(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    precision, cpu = trainer.make_precision("fp32", "cpu"), torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="engine"):
        row = trainer.train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), precision, 7,
                                      cpu, "lines")
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["epoch 7: step 1/2", "epoch 7: step 2/2"]
    assert all(" img/s, loss " in line and line.endswith(" left") for line in lines)
    assert [progress.readable_duration(s) for s in (0.34, 45, 720, 3.5 * 3600)] == ["0.3 s", "45 s", "12 min", "3.5 h"]
    # a tiny training set on a CPU runs at under an image a second: not "0 img/s"
    assert [progress.readable_rate(r) for r in (0.48, 3.14159, 12.6, 4131.2)] == ["0.48", "3.1", "13", "4131"]
    caplog.clear()
    trainer.train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), precision, 8, cpu, "off")
    assert not caplog.records and row["train_loss"] > 0


def test_compiling_is_said_before_the_first_steps_wait_for_it(tmp_path, monkeypatch, caplog):
    """A compile holds the first steps a minute, silent on a bar or in a log file: it is said, with its cache."""
    from engine import trainer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with caplog.at_level("INFO", logger="engine"):
        trainer.compiled(nn.Linear(2, 2))  # lazy: nothing compiles until a call
    assert caplog.messages == [f"compiling the model (torch.compile, mode default): the first steps wait for it, a "
                               f"minute or so the first time; its cache, {tmp_path / 'inductor'}, makes the next "
                               f"run of these shapes start faster"]


def test_a_cuda_graph_mode_that_inductor_skipped_is_said_after_the_first_epoch(tmp_path, monkeypatch, caplog):
    from engine import trainer

    monkeypatch.setattr(trainer, "cuda_graph_skips", lambda: 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = TensorBatches(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    config = RunConfig(backbone="toy", data="toy", dataset="toy", data_path=".", image_size=(2, 2), augment=False,
                       patience=2, max_epochs=2, out=str(tmp_path), compile=True, compile_mode="reduce-overhead")
    no_compile = lambda module, mode="default": module  # noqa: E731  (the warning, not inductor, is under test)
    monkeypatch.setattr(trainer, "compiled", no_compile)
    with caplog.at_level("WARNING", logger="engine"):
        fit(model, batches, batches, config, tmp_path, evaluate_fn=ScriptedEvaluation([10, 20]), progress="off")
    said = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert said == ["--compile-mode reduce-overhead: 2 compiled graph(s) run without CUDA graphs "
                    "(TORCH_LOGS=cudagraphs says why)"]  # once, not every epoch
