"""bertlib.plot draws what a run logged: one line per run and loss, one bar per run, x = iter as logged."""
import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from bertlib.plot import load_runs, plot_losses, plot_run, steady_throughput  # noqa: E402


def _log(folder, speeds, losses):
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for i, (speed, loss) in enumerate(zip(speeds, losses)):
            f.write(json.dumps({"iter": 10 * i + 9, "total_loss": loss, "mlm_loss": loss - 0.7, "nsp_loss": 0.7,
                                "learning_rate": 1e-4 * (i + 1), "sec_per_batch": 1.0,
                                "sentences_per_sec": speed}) + "\n")
    return folder


def test_plot_run_from_log_dirs(tmp_path):
    one = _log(tmp_path / "one", [5.0, 10.0, 12.0], [9.0, 8.0, 7.5])
    two = _log(tmp_path / "two", [8.0, 18.0, 22.0], [9.0, 7.9, 7.2])
    assert steady_throughput(load_runs(one)["run"]) == 11.0  # the first interval (start-up) is left out
    fig = plot_run({"1 process": one, "2 processes": two})
    losses, lr, speed = fig.axes
    assert len(losses.lines) == 6                                   # 2 runs x 3 losses
    assert list(losses.lines[0].get_xdata()) == [9, 19, 29]         # iter exactly as logged
    assert [b.get_height() for b in speed.patches] == [11.0, 20.0]
    assert lr.get_ylabel() == "learning rate" and losses.get_xlabel() == "iter (as logged)"
    ax = plot_losses({"a": one}, keys=["total_loss"])
    assert ax.lines[-1].get_label() == "a"


def test_a_run_without_records_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="run 'x': no metrics records"):
        load_runs({"x": tmp_path / "empty"})
