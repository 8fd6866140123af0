#!/usr/bin/env python3
"""The `ncsrec bench` model in PyTorch, for the CPU speed comparison (docs/results/bench.md).

A benchmark-only tool: nothing in ncsrec imports or needs PyTorch. Install it for this script:

    apt-get install -y python3-torch python3-numpy python3-yaml   # Debian's CPU torch, for /usr/bin/python3
    # or: pip install torch numpy pyyaml  (plain PyPI; the default wheel may be a large CUDA build)

The model is read from the same config as `ncsrec bench` (default configs/ncs_paper.yaml, the
NCS4CVR base network): one nn.EmbeddingBag(sparse=True) per table (mean or sum pooling as
configured; a table shared by several slots is looked up once for all of them), the DLRM-style
input [flatten(E), flatten(E·Eᵀ)], the masked shared layers (ReLU after each) seen by each task
through its own random mask at --density, a linear head per task, the CTR focal loss
(α .75, γ 2) plus 1.5 × the CVR MSE on positives, in a joint step (both tasks every step).
torch.optim.Adam updates the dense parameters and torch.optim.SparseAdam the embeddings.

The masked layers run in two ways, each timed briefly; the faster is then timed in full:
  dense   x @ (W * M_t): materialise the masked weight, one dense matmul
  sparse  torch.sparse.mm with a COO matrix of W ⊙ M_t rebuilt every step from W's values at
          the mask's (fixed) indices, so the gradient reaches W through the gather
Then, with --compile (the default where torch.compile exists), the dense variant again with
everything after the embedding lookups (interaction, masked layers, heads, loss) compiled by
torch.compile (inductor); the embedding bags stay eager, since their sparse gradients are not
compiled. Eager and compiled are timed in full in the same process, and the ratio is printed
against each.

Batches are generated before timing (a pool cycled through), with the same distributions as
`ncsrec bench`: ids Zipf over each table's rows by the same rejection-inversion sampler and the
same rank-to-row scatter, multi-valued slots 1-5 ids, click ~4%, conversion ~10% of clicks.

    /usr/bin/python3 scripts/bench_torch.py --device cpu --ncsrec build/bin/ncsrec

runs `ncsrec bench` first (same config, batch, density, threads, Zipf exponent), then the
PyTorch model, and prints both samples/s and the ratio ncsrec / PyTorch. On a shared machine
either side's time moves between runs by more than the ratio's margin: --rounds N repeats the
pair N times in turn (ncsrec, then PyTorch eager and compiled; the PyTorch model is built once)
and prints every round's ratio and their median, by throughput (the mean step) and by the
median step (which a few slow steps do not move). With --device cuda
both run on the GPU: PyTorch eager with the model, masks and batch pool in GPU memory (each
step ends with the loss read back, a synchronisation); ncsrec with its dense layers on the GPU
and its tables and batches on the host (docs/cuda.md).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MULTI_DEFAULT = "f15,f16,f17,f18,f19"
DEVICE = ["cpu"]  # where the model and the batch pool live (--device)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu, or cuda: the model, its masks and the batch pool on the GPU (ncsrec bench --device cuda "
                        "keeps its tables and batches on the host)")
    p.add_argument("--config", default="configs/ncs_paper.yaml")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30, help="timed steps of the chosen variant")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--trial-steps", type=int, default=8, help="timed steps of each variant when choosing")
    p.add_argument("--variant", default="auto", choices=["auto", "dense", "sparse"])
    p.add_argument("--compile", default="auto", choices=["auto", "yes", "no"],
                   help="also time the dense variant under torch.compile (auto: where torch has it)")
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--zipf", type=float, default=1.05)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--multi-valued", default=MULTI_DEFAULT)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ncsrec", help="path of the ncsrec binary: run `ncsrec bench` too and print the ratio")
    p.add_argument("--json", help="write both sides' results here")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --ncsrec: time both sides this many times in turn and report the median ratio")
    return p.parse_args()


def run_ncsrec(a):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ncsrec.json")
        cmd = [a.ncsrec, "bench", "--config", a.config, "--batch", str(a.batch), "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--density", str(a.density), "--threads", str(a.threads),
               "--schedule", "joint", "--zipf", str(a.zipf), "--pool", str(a.pool),
               "--multi-valued", a.multi_valued, "--seed", str(a.seed), "--device", a.device, "--json", out]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


# ---- data ---------------------------------------------------------------------------------

class Zipf:
    """P(k) ∝ k^-s on {1..n} by rejection-inversion (Hörmann & Derflinger), vectorised; the
    sampler of apps/cmd_bench.cpp."""

    def __init__(self, n, s):
        self.n, self.s = n, s
        self.hx1 = self.h_integral(1.5) - 1.0
        self.hn = self.h_integral(n + 0.5)
        self.sv = 2.0 - self.h_integral_inverse(self.h_integral(2.5) - self.h(2.0))

    @staticmethod
    def helper1(x):
        np = numpy
        x = np.asarray(x, dtype=np.float64)
        small = np.abs(x) <= 1e-8
        safe = np.where(small, 1.0, x)
        return np.where(small, 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x)), np.log1p(safe) / safe)

    @staticmethod
    def helper2(x):
        np = numpy
        x = np.asarray(x, dtype=np.float64)
        small = np.abs(x) <= 1e-8
        safe = np.where(small, 1.0, x)
        return np.where(small, 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x)), np.expm1(safe) / safe)

    def h_integral(self, x):
        lx = numpy.log(x)
        return self.helper2((1.0 - self.s) * lx) * lx

    def h(self, x):
        return numpy.exp(-self.s * numpy.log(x))

    def h_integral_inverse(self, x):
        t = numpy.maximum(x * (1.0 - self.s), -1.0)
        return numpy.exp(self.helper1(t) * x)

    def sample(self, rng, size):
        np = numpy
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:
            u = self.hn + rng.random(todo.size) * (self.hx1 - self.hn)
            x = self.h_integral_inverse(u)
            k = np.clip((x + 0.5).astype(np.int64), 1, self.n)
            ok = (k - x <= self.sv) | (u >= self.h_integral(k + 0.5) - self.h(k.astype(np.float64)))
            out[todo[ok]] = k[ok]
            todo = todo[~ok]
        return out


def scatter(rank, rows):
    # rank (1-based) -> row: the bijection of apps/cmd_bench.cpp ((rank-1)·2654435761 mod rows).
    return ((rank - 1).astype(numpy.uint64) * numpy.uint64(2654435761) % numpy.uint64(rows)).astype(numpy.int64)


def make_batch(rng, tables, samplers, multi, B):
    np, torch = numpy, torch_mod
    click = rng.random(B) < 0.04
    conv = click & (rng.random(B) < 0.10)
    per_table = []
    for t, spec in enumerate(tables):
        ids_list, lens_list = [], []
        for slot in spec["slots"]:
            lens = rng.integers(1, 6, size=B) if slot in multi else np.ones(B, dtype=np.int64)
            ids = scatter(samplers[t].sample(rng, int(lens.sum())), spec["rows"])
            ids_list.append(ids)
            lens_list.append(lens)
        lens = np.concatenate(lens_list)
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        per_table.append((torch.from_numpy(np.concatenate(ids_list)), torch.from_numpy(offsets.astype(np.int64))))
    dev = DEVICE[0]
    return {"click": torch.from_numpy(click.astype(np.float32)).to(dev),
            "conv": torch.from_numpy(conv.astype(np.float32)).to(dev),
            "tables": [(ids.to(dev), offsets.to(dev)) for ids, offsets in per_table]}


# ---- model --------------------------------------------------------------------------------

def build_model(cfg, a):
    torch, nn = torch_mod, torch_mod.nn
    m = cfg["model"]
    dim = int(m.get("embedding_dim", 8))
    tables = []
    for name, t in m["tables"].items():
        tables.append({"name": name, "rows": int(t["rows"]), "slots": list(t.get("slots", [name])),
                       "pooling": t.get("pooling", "sum")})
    tasks = list(m["tasks"].items())
    assert m.get("type") == "ncs" and not m.get("use_dense", True), "the bench model: type ncs, use_dense false"
    assert len(tasks) == 2, "two tasks: CTR then CVR"
    gen = torch.Generator().manual_seed(a.seed)
    # The mask's indices are sorted and unique: torch >= 2.0 can skip coalescing them each step.
    coalesced_kw = {"is_coalesced": True} if int(torch.__version__.split(".")[0]) >= 2 else {}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            init = float(m.get("embedding_init", 0.05))
            self.bags = nn.ModuleList()
            for t in tables:
                bag = nn.EmbeddingBag(t["rows"], dim, mode=t["pooling"], sparse=True)
                with torch.no_grad():
                    bag.weight.normal_(0.0, init, generator=gen)
                self.bags.append(bag)
            self.fields = sum(len(t["slots"]) for t in tables)
            width = self.fields * dim + self.fields * self.fields
            self.input_dim = width
            self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
            for size in m["shared"]:
                bound = (6.0 / (width + size)) ** 0.5  # Xavier uniform, as ncsrec
                self.weights.append(nn.Parameter(torch.empty(width, size).uniform_(-bound, bound, generator=gen)))
                self.biases.append(nn.Parameter(torch.zeros(size)))
                width = size
            self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in tasks])
            # Masks [task][layer] at exactly round(density · size) ones, and their COO indices
            # in the [out, in] orientation torch.sparse.mm needs (x @ Wm = (Wmᵀ @ xᵀ)ᵀ).
            self.masks, self.coo = [], []
            for _ in tasks:
                ms, cs = [], []
                for w in self.weights:
                    n = w.numel()
                    keep = round(a.density * n)
                    flat = torch.zeros(n)
                    flat[torch.randperm(n, generator=gen)[:keep]] = 1.0
                    mk = flat.view_as(w)
                    ms.append(mk)
                    idx_t = mk.t().nonzero().t().contiguous()            # [2, nnz] on Wᵀ [out, in], sorted
                    flat_idx = idx_t[1] * w.shape[1] + idx_t[0]          # positions in W (row-major [in, out])
                    cs.append((idx_t, flat_idx))
                self.masks.append(ms)
                self.coo.append(cs)
            self.variant = "dense"

        def embed(self, batch):
            outs = []
            B = batch["click"].shape[0]
            for i, (t, bag) in enumerate(zip(tables, self.bags)):
                ids, offsets = batch["tables"][i]
                pooled = bag(ids, offsets)                       # [B · slots, dim], slot-major
                outs.append(pooled.view(len(t["slots"]), B, dim).transpose(0, 1))
            return torch.cat(outs, dim=1)                        # E [B, F, dim]

        def shared(self, x, task):
            h = x
            for l, (w, b) in enumerate(zip(self.weights, self.biases)):
                if self.variant == "dense":
                    h = torch.relu(torch.addmm(b, h, w * self.masks[task][l]))
                else:
                    idx, flat = self.coo[task][l]
                    wt = torch.sparse_coo_tensor(idx, w.reshape(-1)[flat], (w.shape[1], w.shape[0]),
                                                 **coalesced_kw)
                    h = torch.relu(torch.sparse.mm(wt, h.t()).t() + b)
            return h

        def tail(self, E):
            B = E.shape[0]
            x = torch.cat([E.reshape(B, -1), torch.bmm(E, E.transpose(1, 2)).reshape(B, -1)], dim=1)
            return [self.heads[t](self.shared(x, t)).squeeze(1) for t in range(len(tasks))]

        def forward(self, batch):
            return self.tail(self.embed(batch))

    net = Net().to(DEVICE[0])
    net.masks = [[mk.to(DEVICE[0]) for mk in ms] for ms in net.masks]
    net.coo = [[(i.to(DEVICE[0]), f.to(DEVICE[0])) for i, f in cs] for cs in net.coo]
    ctr_spec, cvr_spec = tasks[0][1], tasks[1][1]
    alpha, gamma = float(ctr_spec.get("focal_alpha", 0.75)), float(ctr_spec.get("focal_gamma", 2.0))
    cvr_weight = float(cvr_spec.get("loss_weight", 1.0))
    ctr_weight = float(ctr_spec.get("loss_weight", 1.0))

    def loss_fn(logits, batch):
        F = torch.nn.functional
        z, y = logits[0], batch["click"]
        p = torch.sigmoid(z)
        focal = -(alpha * (1 - p) ** gamma * F.logsigmoid(z) * y
                  + (1 - alpha) * p ** gamma * F.logsigmoid(-z) * (1 - y)).mean()
        pos = batch["conv"] > 0
        n_pos = pos.sum()
        mse = (((torch.sigmoid(logits[1]) - batch["conv"]) ** 2) * pos).sum() / n_pos.clamp(min=1)
        return ctr_weight * focal + cvr_weight * mse

    opt_cfg, sp_cfg = cfg.get("optimizer", {}), cfg.get("sparse_optimizer", {})
    dense_params = [p for n, p in net.named_parameters() if not n.startswith("bags.")]
    dense_opt = torch.optim.Adam(dense_params, lr=float(opt_cfg.get("lr", 1e-3)))
    sparse_opt = torch.optim.SparseAdam(list(net.bags.parameters()), lr=float(sp_cfg.get("lr", 1e-3)))
    return net, tables, loss_fn, dense_opt, sparse_opt, dense_params


def compiled_loss(net, loss_fn):
    """loss(batch) with everything after the embedding bags under torch.compile (dense variant)."""
    torch = torch_mod

    def tail_loss(E, click, conv):
        return loss_fn(net.tail(E), {"click": click, "conv": conv})

    compiled = torch.compile(tail_loss)
    return lambda batch: compiled(net.embed(batch), batch["click"], batch["conv"])


def main():
    global numpy, torch_mod
    a = parse_args()
    DEVICE[0] = a.device
    ncsrec = run_ncsrec(a) if a.ncsrec else None
    if ncsrec:
        print(f"ncsrec samples/s: {ncsrec['samples_per_s']:.0f}\n", flush=True)

    import numpy
    import torch
    import yaml
    torch_mod = torch
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this PyTorch sees no GPU")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(a.config) as f:
        cfg = yaml.safe_load(f)

    t0 = time.time()
    net, tables, loss_fn, dense_opt, sparse_opt, dense_params = build_model(cfg, a)
    build_s = time.time() - t0
    multi = set(s for s in a.multi_valued.split(",") if s)
    samplers = [Zipf(t["rows"], a.zipf) for t in tables]
    rng = numpy.random.default_rng(a.seed)
    t0 = time.time()
    pool = [make_batch(rng, tables, samplers, multi, a.batch) for _ in range(a.pool)]
    gen_s = time.time() - t0

    counter = [0]
    last_loss = [0.0]
    eager_loss = lambda b: loss_fn(net(b), b)
    batch_loss = [eager_loss]

    def step():
        b = pool[counter[0] % len(pool)]
        counter[0] += 1
        dense_opt.zero_grad(set_to_none=True)
        sparse_opt.zero_grad(set_to_none=True)
        loss = batch_loss[0](b)
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
        last_loss[0] = float(loss.detach())

    def timed(n):
        times = []
        for _ in range(n):
            s = time.perf_counter()
            step()
            times.append(time.perf_counter() - s)
        return times

    where = torch.cuda.get_device_name() if a.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"pytorch {torch.__version__}, {where}, batch {a.batch}, "
          f"input {net.input_dim}, shared {cfg['model']['shared']}; built in {build_s:.1f} s, "
          f"{a.pool} batches in {gen_s:.1f} s", flush=True)
    timed(a.warmup)  # first touches of the SparseAdam state, allocator warm-up
    trials = {}
    variants = ["dense", "sparse"] if a.variant == "auto" else [a.variant]
    for v in variants:
        net.variant = v
        timed(2)
        t = timed(a.trial_steps)
        trials[v] = a.batch * len(t) / sum(t)
        print(f"  trial {v:6s} ({'x @ (W*M)' if v == 'dense' else 'torch.sparse.mm, COO of W⊙M per step'}): "
              f"{trials[v]:.0f} samples/s over {len(t)} steps", flush=True)
    chosen = max(trials, key=trials.get)

    def timed_run(label):
        t = timed(a.steps)
        if not numpy.isfinite(last_loss[0]):
            sys.exit(f"the PyTorch loss ({label}) is not finite")
        total = sum(t)
        med = sorted(t)[len(t) // 2] * 1000
        print(f"  {len(t)} timed steps ({label}) in {total:.2f} s: {1000 * total / len(t):.1f} ms/step "
              f"(median {med:.1f}, min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f})", flush=True)
        return {"samples_per_s": a.batch * len(t) / total, "ms_per_step": 1000 * total / len(t), "median_ms": med}

    want_compile = a.compile == "yes" or (a.compile == "auto" and hasattr(torch, "compile"))
    if want_compile and not hasattr(torch, "compile"):
        sys.exit(f"--compile yes: torch {torch.__version__} has no torch.compile")
    compiled = [None]  # the compiled loss once it has compiled and warmed up; False: it failed

    def one_round():
        net.variant = chosen
        batch_loss[0] = eager_loss
        runs = {"eager": timed_run(f"eager, {chosen}")}
        runs["eager"]["variant"] = chosen
        if want_compile and compiled[0] is not False:
            net.variant = "dense"
            if compiled[0] is None:
                batch_loss[0] = compiled_loss(net, loss_fn)
                t0 = time.time()
                try:
                    timed(3)  # compiles (forward and backward graphs), then runs with them
                except Exception as e:  # no compiler, no triton: say so; eager stands (--compile yes: fail)
                    if a.compile == "yes":
                        raise
                    print(f"  torch.compile failed, timed eager only: {type(e).__name__}: "
                          f"{str(e).splitlines()[0]}", flush=True)
                    compiled[0] = False
                    return runs
                print(f"  torch.compile: compiled and warmed up in {time.time() - t0:.1f} s", flush=True)
                compiled[0] = batch_loss[0]
            batch_loss[0] = compiled[0]
            runs["compile"] = timed_run("torch.compile, dense")
            runs["compile"]["variant"] = "dense"
        return runs

    rounds = [one_round()]
    ncsrec_runs = [ncsrec] if ncsrec else []
    for r in range(1, a.rounds if ncsrec else 1):
        print(f"\nround {r + 1} of {a.rounds}", flush=True)
        ncsrec_runs.append(run_ncsrec(a))
        print(f"ncsrec samples/s: {ncsrec_runs[-1]['samples_per_s']:.0f}", flush=True)
        rounds.append(one_round())
    runs = rounds[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB -> GiB
    print(f"  peak memory (ru_maxrss): {peak:.2f} GiB")
    for mode, r in runs.items():
        print(f"pytorch samples/s: {r['samples_per_s']:.0f} ({mode}, {r['variant']})")
    sps = runs["eager"]["samples_per_s"]
    result = {"pytorch": {"version": torch.__version__, "samples_per_s": sps, "variant": chosen,
                          "trials": trials, "ms_per_step": runs["eager"]["ms_per_step"],
                          "median_ms": runs["eager"]["median_ms"], "runs": runs, "rounds": rounds,
                          "peak_rss_gib": peak, "steps": a.steps, "batch": a.batch, "threads": a.threads,
                          "device": a.device}}
    if ncsrec:
        result["ncsrec"] = ncsrec
        result["ncsrec_rounds"] = ncsrec_runs
        print()
        for mode in runs:
            pairs = [(n, rr[mode]) for n, rr in zip(ncsrec_runs, rounds) if mode in rr]
            # By throughput over all timed steps (the mean step), and by the median step, which a
            # few slow steps on a shared machine do not move.
            ratios = [n["samples_per_s"] / r["samples_per_s"] for n, r in pairs]
            by_median = [r["median_ms"] / n["median_ms"] for n, r in pairs]
            median, median_by_median = statistics.median(ratios), statistics.median(by_median)
            result[f"ratio_{mode}"] = median
            result[f"ratios_{mode}"] = ratios
            result[f"ratio_{mode}_median_steps"] = median_by_median
            result[f"ratios_{mode}_median_steps"] = by_median
            if len(ratios) == 1:
                print(f"ncsrec {ncsrec['samples_per_s']:.0f} samples/s, pytorch {mode} "
                      f"{runs[mode]['samples_per_s']:.0f} samples/s: ratio ncsrec/pytorch {mode} = {median:.2f} "
                      f"({median_by_median:.2f} by the median steps)")
            else:
                print(f"ratio ncsrec/pytorch {mode}, {len(ratios)} rounds: "
                      + ", ".join(f"{x:.2f}" for x in ratios) + f"; median {median:.2f}")
                print(f"  by the median steps: " + ", ".join(f"{x:.2f}" for x in by_median)
                      + f"; median {median_by_median:.2f}")
        result["ratio"] = result["ratio_eager"]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    # os._exit: torch 1.13 can hang in its thread-local destructors at interpreter exit when an
    # autograd graph is still alive (after an error); nothing here needs Python's cleanup.
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
