"""Reads an ncsrec checkpoint with h5py and numpy only (no ncsrec code) and checks it against
the layout of train/checkpoint.h and DESIGN.md "Files", and against `ncsrec inspect`.

  checkpoint_h5py.py manifest DIR
      verifies DIR/manifest (every file's size and CRC32C); exit 1 with the reason if not.
  checkpoint_h5py.py check DIR --inspect FILE --summary FILE [--mask-file H5 --mask-inspect FILE]
      the manifest, then rank-0.h5: meta attributes, dense/ and optim/, the bit-packed masks,
      embedding/ of every rank, each compared with what `ncsrec inspect` printed (FILE). With
      --mask-file, the checkpoint's masks must be bit for bit those of the mask file the run
      loaded, whose `ncsrec inspect` output is --mask-inspect.

Deliberately not a reader library: every check states the format fact it relies on.
"""
import argparse
import os
import re
import sys

import h5py
import numpy as np
import yaml

FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)
    return cond


# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF,
# as core/crc32c.cpp. Table-driven, one byte at a time: checkpoints here are a few hundred KB.
def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def verify_manifest(ckpt):
    """Returns (format version, file names) or raises ValueError naming the file at fault."""
    lines = open(os.path.join(ckpt, "manifest")).read().splitlines()
    head = lines[0].split()
    if len(head) != 2 or head[0] != "ncsrec-checkpoint":
        raise ValueError(f"manifest: first line {lines[0]!r} is not 'ncsrec-checkpoint <version>'")
    names = []
    for line in lines[1:]:
        name, size, crc_hex = line.split()
        path = os.path.join(ckpt, name)
        # The writer prints the CRC with std::hex: lowercase, no leading zeros.
        if not re.fullmatch(r"[0-9a-f]{1,8}", crc_hex) or (len(crc_hex) > 1 and crc_hex[0] == "0"):
            raise ValueError(f"manifest: CRC {crc_hex!r} of {name} is not lowercase hex without leading zeros")
        got_size = os.path.getsize(path)
        if got_size != int(size):
            raise ValueError(f"{name} is {got_size} bytes, the manifest says {size}")
        with open(path, "rb") as f:
            got_crc = crc32c(f.read())
        if got_crc != int(crc_hex, 16):
            raise ValueError(f"{name} has CRC32C {got_crc:x}, the manifest says {crc_hex}")
        names.append(name)
    return int(head[1]), names


# ---------------------------------------------------------------------------------------------
# `ncsrec inspect` output (apps/main.cpp cmd_inspect, print_masks). Lines may carry more text
# after the parts read here.
HEADER = re.compile(r"checkpoint (.+) \(verified\): format (\d+), step (\d+), epoch (\d+), "
                    r"world size (\d+), data position (\d+)")
MASK_LINE = re.compile(r"    (\S+) \[(\d+), (\d+)\]: density (.+?); shared ([\d.]+)%, private ([\d.]+)%, "
                       r"(.*), dead ([\d.]+)%")
DENSE_LINE = re.compile(r"  (dense/\S+) \[([\d, ]*)\]")
EMBEDDING_LINE = re.compile(r"  embedding/(\S+)/values \[(\d+), (\d+)\]")


def parse_inspect(path):
    out = {"header": None, "masks": {}, "dense": {}, "embedding": {}}
    for line in open(path).read().splitlines():
        if m := HEADER.match(line):
            out["header"] = {k: int(v) for k, v in zip(
                ("format", "step", "epoch", "world_size", "data_position"), m.groups()[1:])}
        elif m := MASK_LINE.match(line):
            layer, rows, cols, dens, shared, private, per_task, dead = m.groups()
            density = {t: float(p) for t, p in re.findall(r"(\S+) ([\d.]+)%", dens)}
            private_per_task = {t: float(p) for t, p in re.findall(r"(\S+)-private ([\d.]+)%", per_task)}
            out["masks"][layer] = dict(shape=(int(rows), int(cols)), density=density, shared=float(shared),
                                       private=float(private), private_per_task=private_per_task,
                                       dead=float(dead))
        elif m := DENSE_LINE.match(line):
            out["dense"][m.group(1)] = tuple(int(x) for x in m.group(2).split(", ") if x)
        elif m := EMBEDDING_LINE.match(line):
            out["embedding"][m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


# ---------------------------------------------------------------------------------------------
def read_masks(f):
    """{layer: {task: bool [rows, cols]}} from mask/<task>/<layer> (packed bits, attributes
    rows, cols, ones, bitorder), checking each dataset's own invariants on the way."""
    masks = {}
    for task in f["mask"]:
        for layer in f["mask"][task]:
            d = f["mask"][task][layer]
            name = f"{f.filename}:mask/{task}/{layer}"
            rows, cols = int(d.attrs["rows"]), int(d.attrs["cols"])
            bitorder = d.attrs["bitorder"]
            bitorder = bitorder.decode() if isinstance(bitorder, bytes) else str(bitorder)
            packed = d[()]
            check(d.dtype == np.uint8 and packed.shape == ((rows * cols + 7) // 8,),
                  f"{name}: uint8 [ceil({rows}*{cols}/8)], is {d.dtype} {packed.shape}")
            check(bitorder in ("little", "big"), f"{name}: bitorder attribute {bitorder!r} is little or big")
            bits = np.unpackbits(packed, bitorder=bitorder)
            check(not bits[rows * cols:].any(), f"{name}: the {bits.size - rows * cols} padding bits are zero")
            m = bits[:rows * cols].reshape(rows, cols).astype(bool)
            check(int(m.sum()) == int(d.attrs["ones"]), f"{name}: 'ones' attribute {int(d.attrs['ones'])} "
                                                        f"is the popcount {int(m.sum())}")
            masks.setdefault(layer, {})[task] = m
    return masks


def compare_masks_with_inspect(masks, shown, what):
    """Density and shared/private/dead split, printed by inspect with 2 decimals (percent)."""
    check(set(masks) == set(shown), f"{what}: inspect lists the mask layers {sorted(shown)}, h5py finds {sorted(masks)}")
    close = lambda got, printed: abs(100 * got - printed) <= 0.005 + 1e-9
    for layer, per_task in masks.items():
        if layer not in shown:
            continue
        s = shown[layer]
        ms = list(per_task.values())
        check(all(m.shape == s["shape"] for m in ms), f"{what} {layer}: shape {s['shape']} as inspect")
        for task, m in per_task.items():
            check(task in s["density"] and close(m.mean(), s["density"][task]),
                  f"{what} {layer}/{task}: density {100 * m.mean():.4f}% as inspect's {s['density'].get(task)}%")
        stack = np.stack(ms)
        every, some = stack.all(0), stack.any(0)
        n = every.size
        check(close(every.sum() / n, s["shared"]), f"{what} {layer}: shared {100 * every.sum() / n:.4f}% as inspect")
        check(close((some & ~every).sum() / n, s["private"]), f"{what} {layer}: private as inspect")
        check(close((~some).sum() / n, s["dead"]), f"{what} {layer}: dead {100 * (~some).sum() / n:.4f}% as inspect")
        for task, m in per_task.items():
            check(close((m & ~every).sum() / n, s["private_per_task"].get(task, -1)),
                  f"{what} {layer}: {task}-private as inspect")


def attr_text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def check_checkpoint(args):
    ckpt = args.checkpoint
    shown = parse_inspect(args.inspect)
    summary = yaml.safe_load(open(args.summary))  # JSON is YAML

    # --- manifest
    try:
        version, files = verify_manifest(ckpt)
        check(True, f"manifest: sizes and CRC32C of {files} match")
    except (ValueError, OSError) as e:
        check(False, f"manifest: {e}")
        return
    check(crc32c(b"123456789") == 0xE3069283, "CRC32C of '123456789' is the standard check value e3069283")
    h = shown["header"]
    if not check(h is not None, "inspect printed the checkpoint header line"):
        return

    f = h5py.File(os.path.join(ckpt, "rank-0.h5"), "r")
    check(set(f.keys()) <= {"meta", "dense", "optim", "mask", "embedding"},
          f"top-level groups {sorted(f.keys())} are among meta, dense, optim, mask, embedding")

    # --- meta
    meta = f["meta"].attrs
    ints = ("step", "epoch", "data_position", "world_size", "format_version", "seed", "optimizer_step")
    for k in ints:
        check(k in meta and np.issubdtype(np.asarray(meta[k]).dtype, np.integer) and np.ndim(meta[k]) == 0,
              f"meta.{k} is an integer scalar ({meta.get(k)!r})")
    for k in ("config", "day", "init_from"):
        check(k in meta and isinstance(meta[k], (bytes, str)), f"meta.{k} is a string")
    world = int(meta["world_size"])
    check(files == [f"rank-{r}.h5" for r in range(world)], f"the manifest lists rank-0..{world - 1}.h5: {files}")
    check(int(meta["format_version"]) == version == h["format"], f"format version {version}: manifest, meta, inspect")
    for k, key in (("step", "step"), ("epoch", "epoch"), ("world_size", "world_size"), ("data_position", "data_position")):
        check(int(meta[k]) == h[key], f"meta.{k} = {int(meta[k])} as inspect")
    check(int(meta["step"]) == summary["steps"], f"meta.step = the run's {summary['steps']} steps (summary.json)")
    config = yaml.safe_load(attr_text(meta["config"]))
    check(isinstance(config, dict) and config["model"]["type"] == "ncs", "meta.config parses as YAML: an ncs model")
    check(int(meta["seed"]) == int(config["run"]["seed"]), "meta.seed is the config's run.seed")
    if args.mask_file:
        check(config["model"]["masks"].get("file") == args.mask_file, "the saved config names the mask file the run loaded")

    # --- dense and its optimizer state
    dense = {f"dense/{n}": d for n, d in f["dense"].items()}
    check({n: d.shape for n, d in dense.items()} == shown["dense"],
          f"dense/: {len(dense)} names and shapes as inspect prints them")
    for n, d in dense.items():
        check(d.dtype == np.float32 and np.isfinite(d[()]).all(), f"{n}: float32, finite")
    optimizer = config["optimizer"]["type"]
    slots = {"adam": {"m", "v"}, "adagrad": {"accumulator"}, "sgd": set()}.get(optimizer)
    check(set(f["optim"].keys()) == {n[len("dense/"):] for n in dense}, "optim/ has one group per dense parameter")
    for name, group in f["optim"].items():
        check(slots is None or set(group.keys()) == slots, f"optim/{name}: slots {sorted(group.keys())} of {optimizer}")
        for slot, d in group.items():
            check(d.shape == dense[f"dense/{name}"].shape, f"optim/{name}/{slot}: shape of the parameter")
        if "v" in group:
            check((group["v"][()] >= 0).all(), f"optim/{name}/v (Adam second moment) is >= 0")

    # --- masks
    masks = read_masks(f)
    check(len(masks) > 0, f"the ncs checkpoint has masks: {sorted(masks)}")
    tasks = set(config["model"]["tasks"])
    for layer, per_task in masks.items():
        check(set(per_task) == tasks, f"mask layer {layer}: one mask per task {sorted(tasks)}")
        weight = f"dense/{layer}.weight"
        shapes = {m.shape for m in per_task.values()}
        check(weight in dense and shapes == {dense[weight].shape}, f"mask {layer}: shape {shapes} is {weight}'s")
        check(len({m.tobytes() for m in per_task.values()}) > 1 or len(per_task) == 1,
              f"mask {layer}: the tasks' masks differ (found by IMP per task)")
        # mask_semantics exact (the default): no step moves a weight outside the union of the
        # tasks' masks, optimizer state included.
        if optimizer == "adam" and config.get("train", {}).get("mask_semantics", "exact") == "exact":
            outside = ~np.stack(list(per_task.values())).any(0)
            moved = sum(int(np.count_nonzero(f[f"optim/{layer}.weight/{s}"][()][outside])) for s in ("m", "v"))
            check(moved == 0, f"optim/{layer}.weight: Adam moments are 0 at all {int(outside.sum())} "
                              f"connections outside every task's mask")
    compare_masks_with_inspect(masks, shown["masks"], "checkpoint")
    if args.mask_file:
        with h5py.File(args.mask_file, "r") as mf:
            loaded = read_masks(mf)
        check(set(loaded) == set(masks) and all(
            set(loaded[l]) == set(masks[l]) and all(np.array_equal(loaded[l][t], masks[l][t]) for t in masks[l])
            for l in masks), "the checkpoint's masks are bit for bit those of the mask file")
        compare_masks_with_inspect(loaded, parse_inspect(args.mask_inspect)["masks"], "mask file")

    # --- embeddings: rank 0's rows as inspect prints them; every rank's keys together
    dim = int(config["model"]["embedding_dim"])
    tables = config["model"]["tables"]
    check(set(f["embedding"].keys()) == set(tables), f"embedding/ has the config's tables {sorted(tables)}")
    check({t: f[f"embedding/{t}/values"].shape for t in f["embedding"]} == shown["embedding"],
          "embedding/<table>/values shapes as inspect prints them")
    all_keys = {t: [] for t in tables}
    for r in range(world):
        with h5py.File(os.path.join(ckpt, f"rank-{r}.h5"), "r") as fr:
            # Every rank saves the same step, and the same dense parameters and masks.
            check(int(fr["meta"].attrs["rank"]) == r and all(fr["meta"].attrs[k] == meta[k] for k in ints),
                  f"rank-{r}.h5: meta.rank = {r}, the other meta integers as rank 0's")
            if r > 0:
                check(all(np.array_equal(fr[n][()], d[()]) for n, d in dense.items()) and
                      all(np.array_equal(fr[f"mask/{t}/{l}"][()], f[f"mask/{t}/{l}"][()])
                          for l in masks for t in masks[l]),
                      f"rank-{r}.h5: dense/ and mask/ equal to rank 0's")
            for t in fr["embedding"]:
                g = fr["embedding"][t]
                keys, values = g["keys"][()], g["values"]
                check(g["keys"].dtype == np.int64 and keys.ndim == 1, f"rank {r} {t}/keys: int64 [n]")
                check(np.unique(keys).size == keys.size, f"rank {r} {t}/keys: {keys.size} unique")
                check(values.shape == (keys.size, dim) and values.dtype == np.float32,
                      f"rank {r} {t}/values: float32 [{keys.size}, {dim}], is {values.dtype} {values.shape}")
                check(np.isfinite(values[()]).all(), f"rank {r} {t}/values: finite")
                for slot, d in g.get("optim", {}).items():
                    check(d.shape == values.shape, f"rank {r} {t}/optim/{slot}: shape of values")
                    if slot == "accumulator":
                        check((d[()] >= 0).all(), f"rank {r} {t}/optim/accumulator (Adagrad) is >= 0")
                all_keys[t].append(keys)
    for t, parts in all_keys.items():
        keys = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        rows = int(tables[t]["rows"])
        check(np.array_equal(np.sort(keys), np.arange(rows)),
              f"{t}: the ranks' keys together are each row 0..{rows - 1} once")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("checkpoint")
    c = sub.add_parser("check")
    c.add_argument("checkpoint")
    c.add_argument("--inspect", required=True)
    c.add_argument("--summary", required=True)
    c.add_argument("--mask-file")
    c.add_argument("--mask-inspect")
    args = p.parse_args()
    if args.cmd == "manifest":
        try:
            verify_manifest(args.checkpoint)
        except (ValueError, OSError) as e:
            print(f"{args.checkpoint}: {e}")
            return 1
        print(f"{args.checkpoint}: manifest verified")
        return 0
    check_checkpoint(args)
    print(f"{len(FAILS)} failed" if FAILS else "all checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
