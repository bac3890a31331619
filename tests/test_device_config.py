"""``run.device`` / ``--device`` and ``run.devices`` / ``--devices``: checked before any work, and on the CPU a
request for a GPU is refused rather than silently run on the CPU."""

from __future__ import annotations

import pytest
import torch

from automl.cli import main
from automl.errors import ConfigError
from automl.runs.config import SearchConfig
from automl.runs.workers import local_devices


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_a_malformed_device_is_refused_by_the_configuration(device):
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        SearchConfig(run={"device": device})


def test_a_malformed_device_list_is_refused():
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        SearchConfig(run={"devices": "cuda:0,gpu1"})


def test_the_cli_refuses_a_bad_device_before_any_work(capsys, tmp_path):
    code = main(["search", "--task", "tests.tasks:tiny", "--device", "gpu", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_a_gpu_on_a_machine_without_one_exits_2_and_leaves_no_run_running(capsys, tmp_path):
    code = main(["search", "--task", "tests.tasks:tiny", "--searcher", "random", "--evaluations", "2",
                 "--finetune-steps", "0", "--device", "cuda", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cuda" in err and "Traceback" not in err
    from tests.test_cli_errors import parent_statuses

    assert "RUNNING" not in parent_statuses(tmp_path)


def test_local_workers_get_their_devices():
    assert local_devices(SearchConfig(run={"workers": 2, "device": "cpu"})) == ()  # each takes run.device
    assert local_devices(SearchConfig(run={"workers": 3, "devices": "cpu"})) == ("cpu", "cpu", "cpu")
    if not torch.cuda.is_available():
        assert local_devices(SearchConfig(run={"workers": 2})) == ("cpu", "cpu")  # auto without a GPU
        with pytest.raises(ConfigError, match="cuda"):
            local_devices(SearchConfig(run={"workers": 2, "devices": "cuda:0,cuda:1"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_gpu_asked_for_on_a_machine_without_one_opens_no_store(capsys, tmp_path):
    main(["search", "--task", "tests.tasks:tiny", "--device", "cuda:0", "--output", str(tmp_path)])
    assert "cuda" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
