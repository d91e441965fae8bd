"""hydra/launcher=vectorized, registered in Hydra's ConfigStore when Hydra scans its plugins.

Hydra imports every plugin module at each start, so this one imports nothing of torch or of the
training code until a sweep launches; the work is done by backprop_lab.vectorized.
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.backprop_lab_vectorized.vectorized_launcher.VectorizedLauncher"
    # a group's members may take this many GB; null: half the memory available (90 % of a GPU's free memory)
    memory_gb: Optional[float] = None
    # true: each member draws its PNG plots after the group trains (false: `backprop-lab show RUN_DIR --plot`)
    plots: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf,
                             provider="backprop-lab")


class VectorizedLauncher(Launcher):
    def __init__(self, memory_gb: Optional[float] = None, plots: bool = False) -> None:
        self.memory_gb, self.plots = memory_gb, plots
        self.config: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from backprop_lab.vectorized import launch

        return launch(self, job_overrides, initial_job_idx)
