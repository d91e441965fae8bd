"""`backprop-lab gradcheck [KEY=VALUE ...]`: are the hand-written gradients right for this model?

For the model the overrides configure (depth, activation, output and loss, batch norm,
dropout, L2, input size), in float64 on a batch of random inputs in [-1, 1]:

1. backward's gradients against torch.autograd through the same network written here with
   torch.nn.functional (batch norm in training mode; dropout with the forward's mask, which
   is an input of the step, not part of the equations being checked);
2. against central finite differences of the hand-written forward, (L(p + eps) - L(p - eps)) / 2 eps,
   at the entries of each parameter with the largest gradients plus a few random ones
   (every entry would take two forward passes each: ~200,000 for the chapter's network).

How close the finite differences must come: within FD_TOL of the parameter's largest |gradient|
(the relative criterion) plus a round-off floor. A float64 loss of magnitude |L| is exact only to
about eps |L| (eps = 2.2e-16), and the central difference divides that error by 2 FD_EPS, so it
carries noise of order eps |L| / FD_EPS whatever the gradient: ~5e-10 for a loss of 2.3. The
relative criterion alone fails correct but tiny gradients, such as the first biases of a deep
sigmoid network (largest |gradient| ~1e-5, of which 1e-5 is 1e-10). The floor is
FD_ROUNDOFF eps max(|L|, 1) / FD_EPS: max(|L|, 1) because a small loss can still be the
difference of terms of order 1 (log-sum-exp less the true logit); FD_ROUNDOFF = 8 is eight times
the largest noise measured over every model the config allows (about 1 eps |L| / FD_EPS). The
truncation error, FD_EPS^2 f''' / 6, is ~1e-13 for these losses and needs no term of its own. For
a loss of order 1 a gradient 1 % wrong is still caught down to a largest |gradient| of ~5e-7, one
twice too large down to ~5e-9; autograd, held to 1e-9 relative with no floor, catches both at
any size.

With optim.weight_decay > 0 the checked gradient is that of the loss plus the L2 penalty
(weight_decay / 2) |W|^2, as sgd_direction applies it. Prints a table per parameter; exits 0
when every parameter passes, 1 when one fails, 2 on a bad override or a model too large for memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import network as nw
from .config import Config, ConfigError
from .errors import EXIT_BAD_INPUT, EXIT_FAILED

AUTOGRAD_TOL = 1e-9  # relative error |g - g_ref| / |g_ref| in float64; a correct gradient gives ~1e-15
FD_EPS = 1e-6
FD_TOL = 1e-5  # |numeric - analytic| <= FD_TOL * (largest |analytic| of the parameter) + fd_floor(loss)
FD_ROUNDOFF = 8  # the floor in units of eps |L| / FD_EPS; correct gradients measure <= 0.9 (module docstring)
# float64 copies of the parameters alive at check's peak: the parameters, backward's gradients, the
# update direction, autograd's leaves, its gradients and its intermediates; measured 7.9 (peak RSS
# over hidden sizes 20,000 and 100,000)
COPIES = 8


@dataclass
class Check:
    name: str
    shape: tuple[int, ...]
    grad_norm: float
    autograd_max_abs: float
    autograd_rel: float
    fd_entries: int
    fd_max_abs: float
    fd_floor: float = 0.0  # the finite differences' round-off floor for this loss (module docstring)
    fd_ok: bool = True

    @property
    def autograd_ok(self) -> bool:
        return self.autograd_rel <= AUTOGRAD_TOL or self.grad_norm == 0 and self.autograd_max_abs == 0

    @property
    def ok(self) -> bool:
        return self.autograd_ok and self.fd_ok


def reference_loss(arch: nw.Arch, params: nw.Params, X: torch.Tensor, Y: torch.Tensor,
                   masks: list[torch.Tensor | None]) -> torch.Tensor:
    """The network in torch.nn.functional, independent of network.forward, for autograd."""
    act = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
           "leaky_relu": lambda z: F.leaky_relu(z, nw.LEAK)}[arch.activation]
    a = X
    L = arch.n_layers
    for l in range(1, L):
        if arch.batch_norm:
            z = F.batch_norm(F.linear(a, params[f"W{l}"].T), None, None, params[f"gamma{l}"], params[f"beta{l}"],
                             training=True, eps=nw.BN_EPS)
        else:
            z = F.linear(a, params[f"W{l}"].T, params[f"b{l}"])
        a = act(z)
        if masks[l - 1] is not None:
            a = a * masks[l - 1]
    z = F.linear(a, params[f"W{L}"].T, params[f"b{L}"])
    if arch.loss == "cross_entropy":
        return F.cross_entropy(z, Y.argmax(dim=1))
    return F.mse_loss(torch.sigmoid(z), Y, reduction="sum") / (2 * X.shape[0])


def fd_floor(loss: float) -> float:
    """The round-off a float64 central difference of this loss can carry (module docstring)."""
    return FD_ROUNDOFF * torch.finfo(torch.float64).eps * max(abs(loss), 1.0) / FD_EPS


def l2(params: nw.Params, weight_decay: float) -> Any:
    return sum((v * v).sum() for k, v in params.items() if k.startswith("W")) * (weight_decay / 2)


def check(cfg: Config, batch: int = 16, entries: int = 6, seed: int | None = None) -> list[Check]:
    """Every trained parameter of cfg's model, checked both ways."""
    from .train import arch_of

    arch = arch_of(cfg)
    seed = cfg.seed if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    params = nw.init_params(arch, cfg.model.init, cfg.model.init_scale, g, dtype=torch.float64)
    X = torch.rand(batch, arch.sizes[0], generator=g, dtype=torch.float64) * 2 - 1
    Y = F.one_hot(torch.randint(0, 10, (batch,), generator=g), 10).double()
    wd = cfg.optim.weight_decay

    def hand_forward() -> nw.Cache:  # the same dropout mask on every call
        return nw.forward(arch, params, X, train=True, dropout=nw.dropout_masks(arch.dropout, torch.Generator().manual_seed(seed + 1)))

    def hand_loss() -> float:
        return (nw.loss_of(arch, hand_forward().z, Y) + l2(params, wd)).item()

    cache = hand_forward()
    floor = fd_floor(hand_loss())
    opt = nw.SGD(weight_decay=wd)
    grads = {k: nw.sgd_direction(opt, k, params[k], g_, None)[0] for k, g_ in nw.backward(arch, params, cache, Y).items()}
    leaves = {k: v.clone().requires_grad_(nw.is_trained(k)) for k, v in params.items()}
    trained = [k for k in leaves if nw.is_trained(k)]
    loss = reference_loss(arch, leaves, X, Y, cache.masks) + l2(leaves, wd)
    reference = dict(zip(trained, torch.autograd.grad(loss, [leaves[k] for k in trained])))

    checks = []
    pick = torch.Generator().manual_seed(seed + 2)
    for name in trained:
        mine, ref = grads.get(name), reference[name]
        if mine is None or mine.shape != ref.shape:
            got = "no gradient" if mine is None else f"shape {tuple(mine.shape)}"
            raise AssertionError(f"backward returned {got} for {name}, expected shape {tuple(ref.shape)}")
        diff = (mine - ref).abs()
        c = Check(name=name, shape=tuple(ref.shape), grad_norm=ref.norm().item(),
                  autograd_max_abs=diff.max().item(),
                  autograd_rel=((mine - ref).norm() / ref.norm()).item() if ref.norm() > 0 else diff.max().item(),
                  fd_entries=0, fd_max_abs=0.0, fd_floor=floor)
        flat, grad = params[name].view(-1), mine.reshape(-1)
        n_top = min(entries // 2, flat.numel())
        idx = set(grad.abs().topk(n_top).indices.tolist())
        idx |= set(torch.randint(0, flat.numel(), (entries - n_top,), generator=pick).tolist())
        for i in sorted(idx):
            old = flat[i].item()
            flat[i] = old + FD_EPS
            up = hand_loss()
            flat[i] = old - FD_EPS
            down = hand_loss()
            flat[i] = old
            c.fd_max_abs = max(c.fd_max_abs, abs((up - down) / (2 * FD_EPS) - grad[i].item()))
        c.fd_entries = len(idx)
        c.fd_ok = c.fd_max_abs <= FD_TOL * grad.abs().max().item() + floor
        checks.append(c)
    return checks


def check_fits(cfg: Config) -> None:
    """Refuse a model whose float64 copies cannot fit in memory: the kernel would kill gradcheck
    part way with no message."""
    from .train import does_not_fit, memory_available, n_parameters

    available, need = memory_available(), COPIES * 8 * n_parameters(cfg)
    if available is not None and need > available:
        raise ConfigError(does_not_fit(cfg, "memory in float64", f"checking it takes about {need / 1e9:,.1f} GB; "
                                                                 f"{available / 1e9:,.1f} GB are available"))


def check_table(checks: list[Check], title: str, compact: bool) -> Any:
    """One row per parameter; `compact` (80 columns): no vertical lines, one space between columns."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption="autograd: max abs and relative error; "
                  "FD: entries checked by finite differences and their max abs error",
                  **({"box": box.SIMPLE_HEAD, "collapse_padding": True, "pad_edge": False} if compact else {}))
    for col in ("param", "shape", "|grad|", "autograd abs", "autograd rel", "FD n", "FD abs", "result"):
        table.add_column(col, justify="left" if col in ("param", "shape") else "right", no_wrap=True)
    for c in checks:
        table.add_row(c.name, "x".join(map(str, c.shape)), f"{c.grad_norm:.2e}", f"{c.autograd_max_abs:.1e}",
                      f"{c.autograd_rel:.1e}", str(c.fd_entries), f"{c.fd_max_abs:.1e}",
                      "[green]pass[/green]" if c.ok else "[bold red]FAIL[/bold red]")
    return table


def render(checks: list[Check], title: str) -> None:
    from .report import OutputConsole, fitting, print_whole

    console = OutputConsole()
    print_whole(console, fitting(console, lambda compact: check_table(checks, title, compact)))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(checks)} parameters FAIL:[/bold red] {', '.join(failed)}")
    else:
        # the tolerances on lines of their own: one line would not fit 80 columns
        console.print(f"[green]all {len(checks)} parameters pass[/green]\n"
                      f"  autograd: relative error <= {AUTOGRAD_TOL:g}\n"
                      f"  finite differences: within {FD_TOL:g} of the largest gradient + round-off "
                      f"{checks[0].fd_floor:.0e}")


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import OmegaConfBaseException

    from .config import CONF_DIR, from_dictconfig
    from .errors import SubcommandParser, error_line, first_line
    from .overrides import check_overrides
    from .rundir import RunDirError
    from .train import arch_of, does_not_fit, out_of_memory

    parser = SubcommandParser(prog="backprop-lab gradcheck", description=__doc__.splitlines()[0],
                                     epilog="Example: backprop-lab gradcheck model.hidden_sizes=[64,32] "
                                            "model.activation=tanh model.batch_norm=true model.dropout=0.2")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for a run, e.g. experiment=book_ch10")
    parser.add_argument("--batch", type=int, default=16, help="random examples in the checked batch (default 16)")
    parser.add_argument("--entries", type=int, default=6, help="entries per parameter checked by finite differences")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.entries < 1:
        parser.error("--batch must be >= 2 (batch norm needs two rows) and --entries >= 1")
    hydra_setting = next((o for o in args.overrides if o.split("=")[0].lstrip("+~").split(".")[0].split("/")[0] == "hydra"),
                         None)
    if hydra_setting is not None:  # Hydra does not run here: it would be ignored without a word
        error_line(f"{hydra_setting}: gradcheck writes no run folder and runs no sweep, so Hydra's settings "
                   f"do not apply; leave it out")
        return EXIT_BAD_INPUT
    try:
        check_overrides(args.overrides)
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = from_dictconfig(compose("config", overrides=args.overrides))
        check_fits(cfg)
    except (ConfigError, RunDirError) as e:
        error_line(str(e))
        return EXIT_BAD_INPUT
    except OmegaConfBaseException as e:
        error_line(f"cannot compose the config: {str(e).splitlines()[0]}")
        return EXIT_BAD_INPUT
    try:
        checks = check(cfg, args.batch, args.entries)
    except AssertionError as e:
        error_line(str(e))
        return EXIT_FAILED
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        error_line(does_not_fit(cfg, "memory in float64", first_line(e)))
        return EXIT_BAD_INPUT
    render(checks, f"gradcheck: {arch_of(cfg).describe()}, float64, batch {args.batch}"
                   + (f", weight decay {cfg.optim.weight_decay:g}" if cfg.optim.weight_decay else ""))
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
