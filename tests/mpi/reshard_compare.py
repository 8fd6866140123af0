"""Compares two checkpoints written by different numbers of ranks (tests/mpi/reshard.sh).

  reshard_compare.py A_DIR B_DIR

They must hold the same model state: every dense parameter and optimizer slot (rank 0's
file), and per embedding table the same rows (by key) with the same values, optimizer state,
count, last_seen_day and updated_step, and the same pending ids of hash tables, all bit for
bit. In each, a row must sit on the rank that owns it: row_wise tables (fixed or hash) on
splitmix64(key) mod world_size, table_wise tables on one rank, replicated tables on every
rank. Reads h5py and numpy only. Exit status 1 on the first difference, with what differs."""
import sys

import h5py
import numpy as np

M64 = (1 << 64) - 1


def mix64(x):
    """embedding/sharded_table.cpp's row_owner hash: the splitmix64 finaliser (core/random.h)."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def load(ckpt, placements):
    files = [h5py.File(f"{ckpt}/rank-0.h5", "r")]
    world = int(files[0]["meta"].attrs["world_size"])
    files += [h5py.File(f"{ckpt}/rank-{r}.h5", "r") for r in range(1, world)]
    dense = {}
    files[0].visititems(lambda n, o: dense.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) and
                        (n.startswith("dense/") or n.startswith("optim/")) else None)
    tables = {}
    for name in files[0]["embedding"]:
        rows, pending = {}, {}
        for rank, f in enumerate(files):
            g = f["embedding"][name]
            keys = g["keys"][()]
            cols = {"values": g["values"][()], "count": g["count"][()], "last_seen_day": g["last_seen_day"][()],
                    "updated_step": g["updated_step"][()]}
            for slot in g.get("optim", {}):
                cols["optim/" + slot] = g["optim"][slot][()]
            placement = placements[name]
            for i, k in enumerate(keys):
                k = int(k)
                if placement == "row_wise" and world > 1 and mix64(k & M64) % world != rank:
                    fail(f"{ckpt}: table {name} key {k} is on rank {rank}, its owner is {mix64(k & M64) % world}")
                if placement == "table_wise" and rank != 0:
                    fail(f"{ckpt}: table_wise table {name} has key {k} on rank {rank}, not 0")
                row = {c: v[i].tobytes() for c, v in cols.items()}
                if k in rows and (placement != "replicated" or rows[k] != row):
                    fail(f"{ckpt}: table {name} key {k} held twice, or two replicas differ")
                rows[k] = row
            if "pending" in g:
                for k, c, d in zip(g["pending/keys"][()], g["pending/count"][()], g["pending/last_seen_day"][()]):
                    if int(k) in pending:
                        fail(f"{ckpt}: table {name} pending id {k} held twice")
                    pending[int(k)] = (int(c), int(d))
        if placement == "replicated" and world > 1:
            for f in files:
                if len(f["embedding"][name]["keys"]) != len(rows):
                    fail(f"{ckpt}: replicated table {name}: a rank holds {len(f['embedding'][name]['keys'])} of {len(rows)} rows")
        tables[name] = (rows, pending)
    return world, dense, tables


def main():
    a_dir, b_dir = sys.argv[1], sys.argv[2]
    placements = dict(arg.split("=") for arg in sys.argv[3:])
    wa, dense_a, tables_a = load(a_dir, placements)
    wb, dense_b, tables_b = load(b_dir, placements)
    if wa == wb:
        fail(f"{a_dir} and {b_dir} were both written by {wa} ranks: nothing was resharded")
    if set(dense_a) != set(dense_b):
        fail(f"dense datasets differ: {sorted(set(dense_a) ^ set(dense_b))[:5]}")
    for n in dense_a:
        if dense_a[n].tobytes() != dense_b[n].tobytes():
            fail(f"{n} differs between {wa} and {wb} ranks")
    if set(tables_a) != set(tables_b):
        fail("the tables differ")
    rows_total = pending_total = 0
    for name in tables_a:
        (ra, pa), (rb, pb) = tables_a[name], tables_b[name]
        if set(ra) != set(rb):
            fail(f"table {name}: {len(set(ra) ^ set(rb))} keys held by one checkpoint only")
        for k in ra:
            for col in ra[k]:
                if ra[k][col] != rb[k][col]:
                    fail(f"table {name} key {k}: {col} differs")
        if pa != pb:
            fail(f"table {name}: the pending ids differ ({len(pa)} vs {len(pb)})")
        rows_total += len(ra)
        pending_total += len(pa)
    print(f"ok   {wa} ranks -> {wb} ranks: {len(dense_a)} dense datasets and {rows_total} rows of "
          f"{len(tables_a)} tables and {pending_total} pending ids identical, every row on its owner")
    if pending_total == 0:
        fail("no hash-table id is pending: the test means some to be")


main()
