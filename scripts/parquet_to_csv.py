#!/usr/bin/env python3
"""Parquet -> CSV for `ncsrec convert` (docs/data.md, "Logs in Parquet").

Streams record batches (memory stays at one batch), writes a header line, and turns list
columns (multi-valued features) into one text field joined by --list-separator, to be read
back with `separator:` in the schema. Nulls become empty fields (missing in the schema).
Writes gzip when OUT ends in .gz.

Needs pyarrow (a tooling dependency, not needed by ncsrec itself): pip install pyarrow

  python3 scripts/parquet_to_csv.py logs/day=2026-01-01/*.parquet --out day1.csv.gz
  python3 scripts/parquet_to_csv.py events.parquet --out events.tsv --delimiter '\\t' --columns user,item,click
"""
import argparse
import gzip
import sys

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit("parquet_to_csv.py needs pyarrow: pip install pyarrow")


def flatten_lists(batch, separator):
    """List columns -> 'a|b|c' strings; everything else as it is."""
    columns = []
    for column in batch.columns:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            as_text = column.cast(pa.list_(pa.string()))
            column = pc.binary_join(as_text, separator)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="Parquet files, read in order (same columns)")
    parser.add_argument("--out", required=True, help="the CSV to write (.gz: gzip-compressed)")
    parser.add_argument("--delimiter", default=",", help="field delimiter (default ','; '\\t' for TSV)")
    parser.add_argument("--list-separator", default="|", help="joins the values of list columns (default '|')")
    parser.add_argument("--columns", help="comma-separated columns to keep (default: all)")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per record batch (memory)")
    args = parser.parse_args()
    delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    if len(delimiter) != 1:
        sys.exit("--delimiter must be one character")
    columns = args.columns.split(",") if args.columns else None

    opener = gzip.open if args.out.endswith(".gz") else open
    rows = 0
    with opener(args.out, "wb") as sink:
        writer = None
        for path in args.inputs:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=args.batch_rows, columns=columns):
                batch = flatten_lists(batch, args.list_separator)
                if writer is None:
                    options = pacsv.WriteOptions(include_header=True, delimiter=delimiter)
                    writer = pacsv.CSVWriter(sink, batch.schema, write_options=options)
                elif batch.schema.names != writer_names:
                    sys.exit(f"{path}: its columns differ from the first file's")
                writer_names = batch.schema.names
                writer.write_batch(batch)
                rows += batch.num_rows
        if writer is not None:
            writer.close()
    print(f"wrote {rows} rows to {args.out}")


if __name__ == "__main__":
    main()
