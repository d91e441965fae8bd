"""backprop-lab's configs: this folder is installed as the package `backprop_lab.conf`, so the
code finds it through the package (importlib.resources), from a clone or an installed wheel.
Only the YAML files here are configs; Hydra ignores this file."""
