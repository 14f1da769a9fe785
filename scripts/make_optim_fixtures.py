"""Golden trajectories for kiln-optim, made once with PyTorch, timm and transformers.

    /work/venv/bin/python scripts/make_optim_fixtures.py

writes crates/kiln-optim/tests/fixtures/{optimizers,schedules}.json. The Rust tests
(crates/kiln-optim/tests/golden.rs) replay the same gradients and compare every parameter after
every step (max abs diff <= 1e-5) and every scheduled learning rate.

The model: four parameters of ranks 1-3, named as kiln's test module names them
(`dense.weight`, `dense.bias` zero-initialized, `norm.gamma`, `kernel`). `dense.bias` and
`norm.gamma` form the no-decay group (kiln's default rule), the others the decay group. The
gradients of each step are drawn here and stored, so no autograd is involved.
"""

import json
import math
from pathlib import Path

import torch
import timm.optim
import transformers

OUT = Path(__file__).resolve().parent.parent / "crates" / "kiln-optim" / "tests" / "fixtures"
STEPS = 12

torch.manual_seed(0)
SHAPES = {
    "dense.weight": (4, 3),
    "dense.bias": (4,),
    "norm.gamma": (3,),
    "kernel": (2, 3, 2),
}
DECAY = ["dense.weight", "kernel"]
NO_DECAY = ["dense.bias", "norm.gamma"]

INIT = {
    "dense.weight": torch.randn(4, 3) * 0.5,
    "dense.bias": torch.zeros(4),
    "norm.gamma": torch.ones(3),
    "kernel": torch.randn(2, 3, 2) * 0.3,
}
# Gradients of growing and shrinking size, so that global clipping engages on some steps only.
GRADS = [
    {name: torch.randn(shape) * (0.2 + 0.3 * (step % 4)) for name, shape in SHAPES.items()}
    for step in range(STEPS)
]
GLOBAL_NORMS = [math.sqrt(sum(float((g ** 2).sum()) for g in grads.values())) for grads in GRADS]
assert any(n < 2.0 for n in GLOBAL_NORMS) and any(n > 2.0 for n in GLOBAL_NORMS), GLOBAL_NORMS
LRS = [0.01 * (1.0 - 0.05 * step) for step in range(STEPS)]


def flat(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def run(make_optimizer):
    params = {name: torch.nn.Parameter(INIT[name].clone()) for name in SHAPES}
    groups = [
        [params[n] for n in DECAY],
        [params[n] for n in NO_DECAY],
    ]
    optimizer = make_optimizer(groups)
    trajectory = []
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = LRS[step]
        for name, p in params.items():
            p.grad = GRADS[step][name].clone()
        optimizer.step()
        trajectory.append({name: flat(p.detach()) for name, p in params.items()})
    return trajectory


def lamb_reference(groups, gamma_lower, gamma_upper, weight_decay, max_grad_norm,
                   bias_correction=True, eps=1e-6, betas=(0.9, 0.999)):
    """LAMB with phi(||w||) = clamp(||w||, gamma_l, gamma_u), otherwise timm's single-tensor
    formula; checked against timm itself below when the clamp is the identity."""

    class Reference:
        def __init__(self):
            self.param_groups = [
                {"params": groups[0], "lr": 0.0, "weight_decay": weight_decay},
                {"params": groups[1], "lr": 0.0, "weight_decay": 0.0},
            ]
            self.state = {}
            self.t = 0

        @torch.no_grad()
        def step(self):
            self.t += 1
            beta1, beta2 = betas
            all_grads = [p.grad for g in self.param_groups for p in g["params"]]
            clip = None
            if max_grad_norm is not None:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in all_grads]))
                clip = (norm / max_grad_norm).clamp(min=1.0)
            bc1 = 1 - beta1 ** self.t if bias_correction else 1.0
            bc2 = 1 - beta2 ** self.t if bias_correction else 1.0
            for group in self.param_groups:
                wd = group["weight_decay"]
                for p in group["params"]:
                    grad = p.grad if clip is None else p.grad / clip
                    st = self.state.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                    st["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
                    st["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    update = (st["m"] / bc1) / (st["v"].sqrt() / math.sqrt(bc2) + eps)
                    if wd != 0:
                        update = update + wd * p
                        w_norm = p.norm()
                        r_norm = update.norm()
                        phi = w_norm.clamp(min=gamma_lower, max=gamma_upper)
                        ratio = torch.where((w_norm > 0) & (r_norm > 0), phi / r_norm, torch.ones(()))
                        update = update * ratio
                    p.add_(update, alpha=-group["lr"])

    return Reference()


def close(a, b):
    return max(abs(x - y) for sa, sb in zip(a, b) for n in sa for x, y in zip(sa[n], sb[n]))


def optimizer_cases():
    cases = []

    def add(name, kiln, make):
        cases.append({"name": name, "kiln": kiln, "trajectory": run(make)})

    def torch_groups(groups, wd):
        return [{"params": groups[0], "weight_decay": wd}, {"params": groups[1], "weight_decay": 0.0}]

    add("adamw", {"optimizer": "adamw", "weight_decay": 0.1},
        lambda g: torch.optim.AdamW(torch_groups(g, 0.1), lr=0.0, foreach=False))
    add("adamw_amsgrad", {"optimizer": "adamw", "weight_decay": 0.1, "amsgrad": True},
        lambda g: torch.optim.AdamW(torch_groups(g, 0.1), lr=0.0, amsgrad=True, foreach=False))
    add("adam_l2", {"optimizer": "adam", "weight_decay": 0.05},
        lambda g: torch.optim.Adam(torch_groups(g, 0.05), lr=0.0, foreach=False))
    add("sgd_plain", {"optimizer": "sgd", "weight_decay": 0.01},
        lambda g: torch.optim.SGD(torch_groups(g, 0.01), lr=0.0, foreach=False))
    add("sgd_momentum_dampening", {"optimizer": "sgd", "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
        lambda g: torch.optim.SGD(torch_groups(g, 0.01), lr=0.0, momentum=0.9, dampening=0.1, foreach=False))
    add("sgd_nesterov", {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        lambda g: torch.optim.SGD(torch_groups(g, 0.01), lr=0.0, momentum=0.9, nesterov=True, foreach=False))

    def timm_lamb(bias_correction, max_grad_norm):
        return lambda g: timm.optim.Lamb(torch_groups(g, 0.01), lr=0.0, bias_correction=bias_correction,
                                         max_grad_norm=max_grad_norm, foreach=False)

    add("lamb", {"optimizer": "lamb", "weight_decay": 0.01}, timm_lamb(True, None))
    add("lamb_no_bias_correction", {"optimizer": "lamb", "weight_decay": 0.01, "bias_correction": False},
        timm_lamb(False, None))
    add("lamb_global_clip", {"optimizer": "lamb", "weight_decay": 0.01, "max_grad_norm": 2.0},
        timm_lamb(True, 2.0))

    # The reference reproduces timm where phi is the identity...
    for bc, mgn, name in [(True, None, "lamb"), (False, None, "lamb_no_bias_correction"),
                          (True, 2.0, "lamb_global_clip")]:
        ref = run(lambda g: lamb_reference(g, 0.0, None, 0.01, mgn, bias_correction=bc))
        timm_case = next(c for c in cases if c["name"] == name)
        diff = close(ref, timm_case["trajectory"])
        assert diff < 1e-6, (name, diff)
    # Both clamps engage: one decayed tensor starts above gamma_u, the other below gamma_l.
    norms = sorted(float(INIT[n].norm()) for n in DECAY)
    assert norms[0] < 1.2 and norms[1] > 1.5, norms
    # ... and adds the paper's clamp of phi(||w||) to [gamma_l, gamma_u].
    add("lamb_phi_clamp", {"optimizer": "lamb", "weight_decay": 0.01, "gamma_lower": 1.2, "gamma_upper": 1.5,
                           "max_grad_norm": 2.0},
        lambda g: lamb_reference(g, 1.2, 1.5, 0.01, 2.0))
    return cases


def lrs_of(make_scheduler, base_lr, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def schedule_cases():
    o = transformers.optimization
    S = torch.optim.lr_scheduler
    cases = []

    def add(name, kiln, make, base_lr, steps):
        cases.append({"name": name, "kiln": kiln, "lrs": lrs_of(make, base_lr, steps)})

    peak, warmup, total = 0.1, 10, 100
    common = {"peak_lr": peak, "warmup_steps": warmup, "total_steps": total}
    add("hf_constant", {**common, "shape": "constant"},
        lambda opt: o.get_constant_schedule_with_warmup(opt, warmup), peak, total + 10)
    add("hf_linear", {**common, "shape": "linear"},
        lambda opt: o.get_linear_schedule_with_warmup(opt, warmup, total), peak, total + 10)
    add("hf_cosine", {**common, "shape": "cosine", "num_cycles": 0.5, "min_lr_ratio": 0.0},
        lambda opt: o.get_cosine_schedule_with_warmup(opt, warmup, total), peak, total + 10)
    add("hf_cosine_2_cycles", {**common, "shape": "cosine", "num_cycles": 2.0, "min_lr_ratio": 0.0},
        lambda opt: o.get_cosine_schedule_with_warmup(opt, warmup, total, num_cycles=2.0), peak, total)
    add("hf_cosine_min_lr", {**common, "shape": "cosine", "num_cycles": 0.5, "min_lr_ratio": 0.1},
        lambda opt: o.get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=0.1),
        peak, total + 10)
    add("hf_polynomial", {**common, "shape": "polynomial", "power": 2.0, "end_lr": 1e-4},
        lambda opt: o.get_polynomial_decay_schedule_with_warmup(opt, warmup, total, lr_end=1e-4, power=2.0),
        peak, total + 10)
    add("hf_inverse_sqrt", {**common, "shape": "inverse_sqrt"},
        lambda opt: o.get_inverse_sqrt_schedule(opt, warmup), peak, total)
    add("hf_inverse_sqrt_timescale", {**common, "shape": "inverse_sqrt", "timescale": 25},
        lambda opt: o.get_inverse_sqrt_schedule(opt, warmup, timescale=25), peak, total)
    add("sgdr_mult_2", {"kind": "sgdr", "base_lr": 0.1, "t_0": 5, "t_mult": 2, "eta_min": 0.001},
        lambda opt: S.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2, eta_min=0.001), 0.1, 80)
    add("sgdr_mult_1", {"kind": "sgdr", "base_lr": 0.1, "t_0": 7, "t_mult": 1, "eta_min": 0.0},
        lambda opt: S.CosineAnnealingWarmRestarts(opt, T_0=7), 0.1, 40)
    add("one_cycle", {"kind": "one_cycle", "max_lr": 0.1, "total_steps": 100},
        lambda opt: S.OneCycleLR(opt, max_lr=0.1, total_steps=100), 0.1, 100)
    add("one_cycle_three_phase_linear",
        {"kind": "one_cycle", "max_lr": 0.1, "total_steps": 50, "three_phase": True, "anneal": "linear",
         "pct_start": 0.25},
        lambda opt: S.OneCycleLR(opt, max_lr=0.1, total_steps=50, three_phase=True, anneal_strategy="linear",
                                 pct_start=0.25), 0.1, 50)
    add("step", {"kind": "step", "base_lr": 0.1, "step_size": 7, "gamma": 0.5},
        lambda opt: S.StepLR(opt, step_size=7, gamma=0.5), 0.1, 40)
    add("exponential", {"kind": "exponential", "base_lr": 0.1, "gamma": 0.95},
        lambda opt: S.ExponentialLR(opt, gamma=0.95), 0.1, 40)
    return cases


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    optimizers = {
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "init": {n: {"shape": list(SHAPES[n]), "values": flat(INIT[n])} for n in SHAPES},
        "grads": [{n: flat(g[n]) for n in SHAPES} for g in GRADS],
        "lrs": LRS,
        "cases": optimizer_cases(),
    }
    (OUT / "optimizers.json").write_text(json.dumps(optimizers))
    schedules = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cases": schedule_cases(),
    }
    (OUT / "schedules.json").write_text(json.dumps(schedules))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
