// HDF5 shard files: write a Block, read a schema, read a row range. The layout is that of
// docs/data-format.md (labels/<task>, weight, dense, sparse/<slot>/{offsets,ids}, meta/<name>,
// truth/<task>; attribute `ncsrec_schema_version` on the root). HDF5 is used through its C
// API, and every call's status is checked: a failing call throws UserError naming the file.
#pragma once

#include <string>

#include "core/data/block.h"

namespace ncsrec {

constexpr int kDataSchemaVersion = 1;

// Writes `block` to `path` atomically (written as path + ".tmp", then renamed).
// Binary tasks (labels all 0/1) are stored as uint8, others as float32.
void write_shard(const std::string& path, const Block& block);

// The schema and row count of a shard.
DataSchema read_shard_schema(const std::string& path, int64_t* rows);

// Reads rows [begin, end) of a shard into `out` (replacing its contents).
void read_shard_rows(const std::string& path, int64_t begin, int64_t end, Block& out);

// The shard files of a day folder (part-*.h5, sorted). Throws UserError if the folder has no
// `_DONE` marker (an incomplete day) or no shards.
std::vector<std::string> list_day_shards(const std::string& day_dir);

}  // namespace ncsrec
