"""A sweep's job configs derived from an earlier job's composition (composing.compose_once) are
exactly the configs Hydra composes for those jobs; overrides that cannot be derived are composed."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from backprop_lab.composing import compose_once

from .conftest import CONF_DIR


@pytest.fixture()
def hydra_loader():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        loader = GlobalHydra.instance().config_loader()

        def master(*overrides: str):
            return loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)

        yield loader, master, compose


def as_data(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


JOBS = [["optim.lr=0.05", "model.init_scale=0.01", "seed=0", "train.epochs=3"],
        ["optim.lr=0.4", "model.init_scale=0.05", "seed=1", "train.epochs=3"],  # derived: values only
        ["optim.lr=0.1", "model.init_scale=1e-3", "seed=7", "train.epochs=3"],
        ["optim.lr=0.1", "model.init_scale=0.01", "seed=0", "train.epochs=3", "model.hidden_size=64"],  # a new key
        ["optim=sgd", "optim.lr=0.2", "model.init_scale=0.01", "seed=0", "train.epochs=3"],  # a group
        ["optim.lr=0.2", "model.init_scale=0.01", "seed=0", "train.epochs=2"],
        ["optim.lr=0.2", "model.init_scale=0.01", "seed=0", "+train.extra=1"],  # an append: composed (refused)
        ["optim.lr=0.2", "model.init_scale=0.01", "seed=0", "model.hidden_sizes=[64,32]"],
        ["optim.lr=0.2", "model.init_scale=0.01", "seed=0", "model.hidden_sizes=[32]"]]  # a list: composed


def test_derived_job_configs_are_hydras_own(hydra_loader):
    loader, master, _ = hydra_loader
    config = master("hydra/launcher=vectorized", "hydra.sweep.dir=/tmp/x", "optim.lr=0.05,0.4", "seed=0,1")
    hydras = []
    for job in JOBS:
        try:
            hydras.append(as_data(loader.load_sweep_config(config, list(job))))
        except Exception as e:  # noqa: BLE001 - what Hydra refuses, compose_once must refuse too
            hydras.append(type(e))
    real = loader.load_sweep_config
    calls = []

    def counting(master_config, overrides):
        calls.append(overrides)
        return real(master_config, overrides)

    loader.load_sweep_config = counting
    compose_once(loader)
    for job, theirs in zip(JOBS, hydras):
        if isinstance(theirs, type):
            with pytest.raises(theirs):
                loader.load_sweep_config(config, list(job))
            continue
        ours = loader.load_sweep_config(config, list(job))
        assert as_data(ours) == theirs, job
        assert ours.hydra.job.override_dirname == theirs["hydra"]["job"]["override_dirname"]
    composed = [c for c in calls]
    # jobs 1, 2 derived from job 0, job 5 from job 0 (epochs), job 8 not (a list value)
    assert JOBS[1] not in composed and JOBS[2] not in composed and JOBS[5] not in composed
    assert JOBS[0] in composed and JOBS[3] in composed and JOBS[4] in composed and JOBS[8] in composed
    # a second call hands out a copy of the same composition, not the caller's changed one
    first = loader.load_sweep_config(config, list(JOBS[1]))
    first.optim.lr = 99.0
    assert loader.load_sweep_config(config, list(JOBS[1])).optim.lr == 0.4
    assert len(calls) == len(composed)


def test_the_vectorized_launcher_takes_the_configs_the_checks_made_once(hydra_loader):
    """check_planned_jobs keeps each job's checked config for a vectorised sweep; compose_jobs
    takes it for the same master, overrides and job number, once, instead of composing again."""
    from backprop_lab.composing import keep_checked, take_checked
    from backprop_lab.sweep import check_planned_jobs
    from backprop_lab.vectorized import compose_jobs

    loader, master, _ = hydra_loader
    config = master("hydra/launcher=vectorized")
    jobs = [["optim.lr=0.05"], ["optim.lr=0.2"]]
    check_planned_jobs(config, jobs)
    kept = dict(loader.load_sweep_config.checked)
    assert sorted((o, n) for _, o, n in kept) == [(("optim.lr=0.05",), 0), (("optim.lr=0.2",), 1)]
    composed = loader.load_sweep_config
    loader.load_sweep_config = lambda *a: pytest.fail("composed again")
    loader.load_sweep_config.checked = composed.checked
    planned = compose_jobs(loader, config, jobs, 0)
    assert [p.config for p in planned] == [kept[id(config), ("optim.lr=0.05",), 0][0],
                                           kept[id(config), ("optim.lr=0.2",), 1][0]]
    assert [p.cfg.optim.lr for p in planned] == [0.05, 0.2] and [p.config.hydra.job.num for p in planned] == [0, 1]
    assert take_checked(loader, config, ["optim.lr=0.05"], 0) is None  # taken once
    loader.load_sweep_config = composed
    keep_checked(loader, config, ["optim.lr=0.4"], 5, "config", "typed")
    assert take_checked(loader, config, ["optim.lr=0.4"], 4) is None  # another job number: not this one
    assert take_checked(loader, master(), ["optim.lr=0.4"], 5) is None  # another sweep's master
    assert take_checked(loader, config, ["optim.lr=0.4"], 5) == ("config", "typed")


def test_the_sweepers_batch_check_composes_only_jobs_not_composed_yet(hydra_loader):
    from types import SimpleNamespace

    from hydra.errors import ConfigCompositionException
    from hydra.plugins.sweeper import Sweeper

    loader, master, _ = hydra_loader
    config = master("hydra/launcher=vectorized", "optim.lr=0.05,0.4")
    compose_once(loader)
    for job in JOBS[:3]:  # as check_planned_jobs composes every job before the sweeper's first batch
        loader.load_sweep_config(config, list(job))
    ours, asked = loader.load_sweep_config, []

    def counting(master_config, sweep_overrides):
        asked.append(list(sweep_overrides))
        return ours(master_config, sweep_overrides)

    counting.known = ours.known
    loader.load_sweep_config = counting
    sweeper = SimpleNamespace(hydra_context=SimpleNamespace(config_loader=loader), config=config)
    Sweeper.validate_batch_is_legal(sweeper, [JOBS[0], JOBS[1], JOBS[2]])
    assert asked == []  # composed (0) or derived (1, 2) already: nothing composed again
    Sweeper.validate_batch_is_legal(sweeper, [JOBS[1], JOBS[3]])
    assert asked == [JOBS[3]]  # a job not seen yet is still checked
    with pytest.raises(ConfigCompositionException):  # and one that does not compose still fails the batch
        Sweeper.validate_batch_is_legal(sweeper, [JOBS[0], ["optim.lr=0.1", "no_such_group=x"]])
