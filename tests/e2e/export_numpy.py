"""A reference scorer for `ncsrec export` files, written from docs/export.md alone: it reads the
export file and the data shards with h5py and computes every task's probability in NumPy
(float64). It imports no ncsrec code.

  export_numpy.py compare EXPORT PREDICT_CSV DAY_OR_SHARD... [--tol 1e-5] [--require-format csr|dense]...
      scores the rows of the shards (a day folder: its part-*.h5 in name order, as ncsrec reads
      them) and compares every output column with `ncsrec predict`'s CSV. Prints the largest
      absolute difference per column; exit 1 when one exceeds --tol or the file breaks a format
      rule. --require-format: at least one masked weight must be stored in that form.
  export_numpy.py make-masks OUT --in N --sizes A,B,... --density TASK=D,TASK=D [--seed S]
      writes a mask file (mask/<task>/shared.<l>, numpy packbits little bit order) of random
      masks with the given density per task, for model.masks.file.

Scores: single_task, shared_embedding, esmm, shared_bottom, ncs, mmoe, ple (masked experts,
BatchNorm, LayerNorm, APG self-wise and group-wise, interaction dot, ESMM heads). Not
three_tower (its serving form is the retrieval export of `ncsrec eval --retrieval`).
"""
import argparse
import csv
import glob
import os
import sys

import h5py
import numpy as np


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def names(value):
    """A comma-joined name list attribute ("" is the empty list)."""
    return [n for n in text(value).split(",") if n]


class FormatError(Exception):
    pass


def require(cond, what):
    if not cond:
        raise FormatError(what)


# ---------------------------------------------------------------------------------------------
# Data: docs/data-format.md "Reading a shard with h5py".
def shard_files(entries):
    files = []
    for entry in entries:
        files += sorted(glob.glob(os.path.join(entry, "part-*.h5"))) if os.path.isdir(entry) else [entry]
    return files


def read_shard(path):
    with h5py.File(path, "r") as f:
        require(int(f.attrs["ncsrec_schema_version"]) == 1, f"{path}: schema version")
        out = {"sparse": {}, "rows": f["labels/" + names(f.attrs["tasks"])[0]].shape[0]}
        out["dense"] = f["dense"][()].astype(np.float64) if "dense" in f else None
        for slot in names(f.attrs["slots"]):
            out["sparse"][slot] = (f[f"sparse/{slot}/offsets"][()], f[f"sparse/{slot}/ids"][()])
        return out


# ---------------------------------------------------------------------------------------------
# The export file: docs/export.md.
class Export:
    def __init__(self, path):
        with h5py.File(path, "r") as f:
            meta = f["meta"].attrs
            require(text(meta["format"]) == "ncsrec-export", "meta.format is not ncsrec-export")
            require(int(meta["format_version"]) == 2, f"format_version {meta['format_version']} is not 2")
            require(text(meta["kind"]) == "full", f"kind {text(meta['kind'])} is not full")
            self.model = {k: (text(v) if isinstance(v, bytes) else v) for k, v in f["model"].attrs.items()}
            self.input = {k: (text(v) if isinstance(v, bytes) else v) for k, v in f["input"].attrs.items()}
            self.tasks = names(self.model["tasks"])
            self.towers = {t: [int(s) for s in f[f"model/tasks/{t}"].attrs["tower"]] for t in self.tasks}
            self.logit_offset = {t: float(f[f"model/tasks/{t}"].attrs["logit_offset"]) for t in self.tasks}
            self.dense = {n: f["dense"][n][()].astype(np.float64) for n in f["dense"]}
            self.masked, self.formats = {}, []
            for layer in f.get("masked", {}):
                for task in f["masked"][layer]:
                    self.masked.setdefault(layer, {})[task] = self._masked(f["masked"][layer][task], f"{layer}/{task}")
            self.history = {}
            for name in f.get("history", {}):
                g = f["history"][name]
                self.history[name] = (g["keys"][()], g["values"][()].astype(np.float64), text(g.attrs["slot"]),
                                      text(g.attrs["kind"]), int(g.attrs["rows"]))
            self.tables = {}
            for name in f["tables"]:
                g = f["tables"][name]
                rows, dim = int(g.attrs["rows"]), int(g.attrs["dim"])
                keys, values = g["keys"][()], g["values"][()].astype(np.float64)
                require(values.shape == (len(keys), dim), f"tables/{name}: values {values.shape} vs keys {len(keys)}")
                if text(g.attrs["kind"]) == "hash":
                    # A hash table: the row of an id is the one with that key; an id without one reads zeros.
                    require(np.all(np.diff(keys) > 0), f"tables/{name}: keys are not ascending")
                    self.tables[name] = ("hash", keys, values)
                    continue
                # A fixed table: every row once, key r is global row r of the table.
                require(np.array_equal(np.sort(keys), np.arange(rows)), f"tables/{name}: keys are not rows 0..{rows - 1}")
                table = np.zeros((rows, dim))
                table[keys] = values
                self.tables[name] = table

    def _masked(self, obj, where):
        shape = tuple(int(s) for s in obj.attrs["shape"])
        fmt = text(obj.attrs["format"])
        self.formats.append(fmt)
        if fmt == "dense":
            w = obj[()].astype(np.float64)
            require(w.shape == shape, f"masked/{where}: shape {w.shape} vs attribute {shape}")
            require(int(np.count_nonzero(w)) <= int(obj.attrs["nnz"]), f"masked/{where}: more nonzeros than nnz")
            return w
        require(fmt == "csr", f"masked/{where}: unknown format {fmt}")
        indptr, indices, data = obj["indptr"][()], obj["indices"][()], obj["data"][()].astype(np.float64)
        require(len(indptr) == shape[0] + 1 and indptr[0] == 0 and indptr[-1] == len(data) == len(indices),
                f"masked/{where}: CSR arrays do not agree")
        require(len(data) == int(obj.attrs["nnz"]), f"masked/{where}: {len(data)} stored, nnz {obj.attrs['nnz']}")
        w = np.zeros(shape)
        w[np.repeat(np.arange(shape[0]), np.diff(indptr)), indices] = data
        return w

    # -- layers ---------------------------------------------------------------------------------
    def weight(self, layer, task):
        """The [in, out] weight of linear layer `layer` as task `task` sees it."""
        if layer + ".weight" in self.dense:
            return self.dense[layer + ".weight"]
        return self.masked[layer][task]

    def linear(self, layer, x, task=None):
        return x @ self.weight(layer, task) + self.dense[layer + ".bias"]

    def apg(self, layer, x, z):
        K = int(self.model["apg_rank"])
        s = z
        hyper = len(self.model["apg_hyper_hidden"]) + 1
        for i in range(hyper):  # the hypernetwork: ReLU between its layers, none after the last
            s = self.linear(f"{layer}.hyper.{i}", s)
            if i + 1 < hyper:
                s = np.maximum(s, 0)
        B = x.shape[0]
        S = s[:, :K * K].reshape(B, K, K)  # row-major K×K per row
        g = np.einsum("ba,bac->bc", x @ self.dense[layer + ".U"], S)
        y = g @ self.dense[layer + ".V"]
        if int(self.model["apg_generate_bias"]):
            return y + s[:, K * K:K * K + y.shape[1]]
        return y + self.dense[layer + ".bias"]

    def norm(self, layer, h):
        kind, eps = self.model["norm"], float(self.model["norm_eps"])
        if kind == "batch":
            bn = layer + ".bn."
            h = (h - self.dense[bn + "running_mean"]) / np.sqrt(self.dense[bn + "running_var"] + eps)
            return h * self.dense[bn + "gamma"] + self.dense[bn + "beta"]
        if kind == "layer":
            ln = layer + ".ln."
            mu = h.mean(axis=1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
            return (h - mu) / np.sqrt(var + eps) * self.dense[ln + "gamma"] + self.dense[ln + "beta"]
        return h

    def feed_forward(self, prefix, x, sizes, final_activation, apg, condition=None):
        """A hidden layer is (linear | APG) -> norm -> ReLU; the output layer a plain linear."""
        h = x
        for i in range(len(sizes)):
            layer = f"{prefix}.{i}"
            hidden = i + 1 < len(sizes) or final_activation
            if hidden and apg:
                h = self.apg(layer, h, h if condition is None else condition)
            else:
                h = self.linear(layer, h)
            if hidden:
                h = np.maximum(self.norm(layer, h), 0)
        return h

    def masked_mlp(self, prefix, x, depth, task):
        h = x
        for i in range(depth):
            h = np.maximum(self.linear(f"{prefix}.{i}", h, task), 0)
        return h

    def gate(self, name, x, experts):
        logits = self.linear(name, x)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return sum(p[:, j:j + 1] * e for j, e in enumerate(experts))

    def expert(self, name, x, task, masked):
        """An expert: a masked MLP (ReLU after every layer, W as `task` sees it) or a FeedForward."""
        sizes = [int(s) for s in self.model["expert_sizes"]]
        if masked:
            return self.masked_mlp(name, x, len(sizes), task)
        return self.feed_forward(name, x, sizes, True, "experts" in names(self.model["apg_in"]))

    # -- the model --------------------------------------------------------------------------------
    def inputs(self, shard, prefix=""):
        """The input vector of every row: pooled slot embeddings, dense features, dot products."""
        d, B = int(self.input["embedding_dim"]), shard["rows"]
        x = np.zeros((B, int(self.input["width"])))
        slots, tables, pooling = names(self.input["slots"]), names(self.input["tables"]), names(self.input["pooling"])
        for k, (slot, table, pool) in enumerate(zip(slots, tables, pooling)):
            offsets, ids = shard["sparse"][slot]
            values = self.tables[prefix + table]
            if isinstance(values, tuple):  # hash: the row keyed by the id, else a zero row
                _, keys, held = values
                at = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
                found = (len(keys) > 0) & (keys[at] == ids) if len(keys) else np.zeros(len(ids), bool)
                values = np.vstack([held, np.zeros((1, d))])
                rows = np.where(found, at, len(keys))
            else:
                rows = np.mod(ids, values.shape[0])  # id -> row: the non-negative remainder
            counts = np.diff(offsets)
            pooled = np.zeros((B, d))
            np.add.at(pooled, np.repeat(np.arange(B), counts), values[rows])
            if pool == "mean":
                pooled[counts > 0] /= counts[counts > 0, None]
            x[:, k * d:(k + 1) * d] = pooled
        D = int(self.input["dense_dim"])
        if D:
            c = int(self.input["dense_col"])
            x[:, c:c + D] = shard["dense"]
        c = int(self.input["history_col"])
        for name, dim in zip(names(self.input["history"]), [int(v) for v in self.input["history_dims"]]):
            keys, values, slot, kind, rows = self.history[name]
            offsets, ids = shard["sparse"][slot]
            ids = np.mod(ids, rows) if kind == "fixed" else ids
            at = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
            found = (keys[at] == ids) if len(keys) else np.zeros(len(ids), bool)
            held = np.vstack([values, np.zeros((1, dim))])
            summed = np.zeros((B, dim))
            np.add.at(summed, np.repeat(np.arange(B), np.diff(offsets)), held[np.where(found, at, len(keys))])
            x[:, c:c + dim] = summed
            c += dim
        if self.input["interaction"] == "dot":
            F, c = int(self.input["interaction_fields"]), int(self.input["interaction_col"])
            e = x[:, :F * d].reshape(B, F, d)
            x[:, c:c + F * F] = np.einsum("bid,bjd->bij", e, e).reshape(B, F * F)
        return x

    def condition(self, x):
        """The group-wise APG condition: the pooled embeddings of apg_condition's slots."""
        slots, d = names(self.input["slots"]), int(self.input["embedding_dim"])
        return np.concatenate([x[:, slots.index(s) * d:(slots.index(s) + 1) * d]
                               for s in names(self.model["apg_condition"])], axis=1)

    def tower_inputs(self, shard):
        m, T = self.model, self.tasks
        kind = m["type"]
        if kind == "three_tower":
            raise NotImplementedError("three_tower is not scored by this reference")
        if kind == "single_task":
            xs = [self.inputs(shard, t + ".") for t in T]
            return xs, xs
        x = self.inputs(shard)
        apg_in = names(m["apg_in"])
        masked = bool(int(m["experts_masked"]))  # MMoE's experts, PLE's shared experts
        if kind in ("shared_embedding", "esmm"):
            return [x] * len(T), [x] * len(T)
        if kind == "shared_bottom":
            h = self.feed_forward("bottom", x, [int(s) for s in m["bottom"]], True, "bottom" in apg_in)
            return [h] * len(T), [x] * len(T)
        if kind == "ncs":
            depth = len(m["shared"])
            return [self.masked_mlp("shared", x, depth, t) for t in T], [x] * len(T)
        if kind == "mmoe":
            n = int(m["mmoe_experts"])
            out = []
            for t in T:
                experts = [self.expert(f"expert.{j}", x, t, masked) for j in range(n)]
                out.append(self.gate(f"gate.{t}", x, experts))
            return out, [x] * len(T)
        if kind == "ple":
            L, TE, SE = int(m["ple_levels"]), int(m["ple_task_experts"]), int(m["ple_shared_experts"])
            task_in, shared_in = [x] * len(T), x
            for level in range(L):
                p = f"ple.{level}."
                own = [[self.expert(f"{p}{t}.expert.{j}", task_in[i], t, False) for j in range(TE)] for i, t in enumerate(T)]
                shared = [[self.expert(f"{p}shared.expert.{j}", shared_in, t, masked) for j in range(SE)] for t in T]
                new_in = [self.gate(f"{p}{t}.gate", task_in[i], own[i] + shared[i]) for i, t in enumerate(T)]
                if level + 1 < L:
                    shared_in = self.gate(p + "shared.gate", shared_in, [e for o in own for e in o] + shared[0])
                task_in = new_in
            return task_in, [x] * len(T)
        raise NotImplementedError(f"model type {kind}")

    def score(self, shard):
        """{output name: probabilities [rows]} for one shard."""
        heads, inputs = self.tower_inputs(shard)
        apg_towers = "towers" in names(self.model["apg_in"])
        group = bool(names(self.model["apg_condition"]))
        probs = []
        for i, t in enumerate(self.tasks):
            cond = self.condition(inputs[i]) if apg_towers and group else None
            logit = self.feed_forward(f"tower.{t}", heads[i], self.towers[t] + [1], False, apg_towers, cond)
            probs.append(1 / (1 + np.exp(-(logit[:, 0] + self.logit_offset[t]))))
        if int(self.model["esmm"]):
            probs.append(probs[0] * probs[1])
        return dict(zip(names(self.model["outputs"]), probs))


def compare(args):
    try:
        export = Export(args.export)
        scored = {}
        for path in shard_files(args.data):
            for k, v in export.score(read_shard(path)).items():
                scored.setdefault(k, []).append(v)
        scored = {k: np.concatenate(v) for k, v in scored.items()}
    except FormatError as e:
        print(f"FAIL {args.export}: {e}")
        return 1
    with open(args.predict) as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    fails = 0
    if header != ["row"] + names(export.model["outputs"]):
        print(f"FAIL predict columns {header} are not row + the export's outputs {export.model['outputs']}")
        return 1
    for j, name in enumerate(header[1:], start=1):
        want = body[:, j]
        got = scored[name]
        if got.shape != want.shape:
            print(f"FAIL {name}: {got.shape[0]} rows scored, predict wrote {want.shape[0]}")
            fails += 1
            continue
        diff = float(np.max(np.abs(got - want)))
        ok = diff <= args.tol
        print(f"{'ok  ' if ok else 'FAIL'} {export.model['type']} {name}: max |numpy - predict| = {diff:.3g} "
              f"over {len(want)} rows (tol {args.tol:g})")
        fails += not ok
    for fmt in args.require_format:
        if fmt not in export.formats:
            print(f"FAIL no masked weight is stored as {fmt} (formats: {export.formats})")
            fails += 1
    if export.formats:
        print(f"     masked weights: {export.formats.count('csr')} csr, {export.formats.count('dense')} dense")
    return 1 if fails else 0


def make_masks(args):
    rng = np.random.default_rng(args.seed)
    sizes = [args.inputs] + [int(s) for s in args.sizes.split(",")]
    with h5py.File(args.out, "w") as f:
        for item in args.density.split(","):
            task, density = item.split("=")
            for layer in range(len(sizes) - 1):
                rows, cols = sizes[layer], sizes[layer + 1]
                bits = (rng.random(rows * cols) < float(density)).astype(np.uint8)
                name = f"mask/{task}/shared.{layer}"
                f[name] = np.packbits(bits, bitorder="little")
                f[name].attrs["rows"] = np.int64(rows)
                f[name].attrs["cols"] = np.int64(cols)
                f[name].attrs["bitorder"] = np.bytes_("little")
    return 0


def apply_delta(args):
    """Yesterday's full export + today's delta must equal today's full export: every dense
    parameter and masked weight, and every table's keys and values, exactly."""
    def datasets(f, group):
        out = {}
        f[group].visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out

    with h5py.File(args.full, "r") as a, h5py.File(args.delta, "r") as d, h5py.File(args.today, "r") as b:
        require(text(d["meta"].attrs["kind"]) == "delta", "the delta's meta.kind is not delta")
        require(text(a["meta"].attrs["kind"]) == "full" and text(b["meta"].attrs["kind"]) == "full", "full exports expected")
        require(int(d["meta"].attrs["since_step"]) == int(a["meta"].attrs["step"]),
                f"the delta applies to step {d['meta'].attrs['since_step']}, the full export is of step {a['meta'].attrs['step']}")
        for group in ("dense", "masked"):
            if group not in b:
                continue
            want, got = datasets(b, group), datasets(d, group)  # a delta carries them in full
            require(sorted(want) == sorted(got), f"{group}: the delta holds other datasets")
            for n in want:
                require(np.array_equal(want[n], got[n]), f"{group}/{n} differs")
        rows_sent = 0
        for name in b["tables"]:
            table = {int(k): v for k, v in zip(a["tables"][name]["keys"][()], a["tables"][name]["values"][()])}
            g = d["tables"][name]
            for k in g["evicted"][()]:
                require(int(k) in table, f"tables/{name}: evicted key {k} was not in yesterday's export")
                del table[int(k)]
            for k, v in zip(g["keys"][()], g["values"][()]):
                table[int(k)] = v
            rows_sent += len(g["keys"])
            keys = np.array(sorted(table), dtype=np.int64)
            require(np.array_equal(keys, b["tables"][name]["keys"][()]), f"tables/{name}: keys differ after the delta")
            values = np.array([table[int(k)] for k in keys]).reshape(len(keys), -1)
            require(np.array_equal(values, b["tables"][name]["values"][()]), f"tables/{name}: values differ after the delta")
        total = sum(len(b["tables"][n]["keys"]) for n in b["tables"])
        print(f"ok   {args.full} + {args.delta} = {args.today}: {rows_sent} of {total} rows sent")
        require(0 < rows_sent < total, "the delta should hold some rows but not all of them")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("export")
    c.add_argument("predict")
    c.add_argument("data", nargs="+")
    c.add_argument("--tol", type=float, default=1e-5)
    c.add_argument("--require-format", action="append", default=[], choices=["csr", "dense"])
    m = sub.add_parser("make-masks")
    m.add_argument("out")
    m.add_argument("--in", dest="inputs", type=int, required=True)
    m.add_argument("--sizes", required=True)
    m.add_argument("--density", required=True)
    m.add_argument("--seed", type=int, default=1)
    ad = sub.add_parser("apply-delta")
    ad.add_argument("full")
    ad.add_argument("delta")
    ad.add_argument("today")
    args = p.parse_args()
    if args.cmd == "apply-delta":
        return apply_delta(args)
    return compare(args) if args.cmd == "compare" else make_masks(args)


if __name__ == "__main__":
    sys.exit(main())
