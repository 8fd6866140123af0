// The GPU embedding table's pooled lookup and its fused backward + sparse update
// (cuda/embedding_table.h) against a device-to-device copy measured in the same process: how
// close the lookup comes to the memory bandwidth the device reaches on a plain copy.
//
//   ncsrec_bench_embedding [--rows N] [--dim D] [--batch B] [--slots S] [--zipf S] [--hash]
//                          [--reps N] [--json FILE]
//
// Defaults: a fixed table of 10,000,000 rows × 16 (640 MB of f32), batches of 4,096 rows with
// 20 one-id slots reading it, ids Zipf(1.05)-distributed over the rows (rank k ∝ k^-1.05, from
// the continuous power law's inverse CDF, ranks scattered over the rows by a multiplicative
// bijection), 20 timed repetitions after 3 untimed ones, each ended by a device synchronisation.
//
// Bytes counted for the lookup: every id's row read (nnz × dim × 4), the pooled output written
// (batch × slots × dim × 4) and the ids and offsets read (8 bytes each); "unique" counts each
// distinct row once instead (what must come from memory; repeats may hit the cache). The lookup
// includes the table's key sort and unique pass (it is the training forward's code path). The
// copy moves one buffer of the table's size to another: 2 × bytes per copy (read + write).
// Prints a table and, with --json, the same numbers. Needs a GPU (exit status 2 without one).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "cuda/device.h"
#include "cuda/embedding_table.h"

namespace ncsrec {
namespace {

struct Args {
  int64_t rows = 10'000'000, dim = 16, batch = 4096, slots = 20, reps = 20;
  double zipf = 1.05;
  bool hash = false;
  std::string json;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UserError(k + " needs a value");
      return argv[++i];
    };
    if (k == "--rows") a.rows = std::stoll(value());
    else if (k == "--dim") a.dim = std::stoll(value());
    else if (k == "--batch") a.batch = std::stoll(value());
    else if (k == "--slots") a.slots = std::stoll(value());
    else if (k == "--reps") a.reps = std::stoll(value());
    else if (k == "--zipf") a.zipf = std::stod(value());
    else if (k == "--hash") a.hash = true;
    else if (k == "--json") a.json = value();
    else throw UserError("unknown option " + k + " (see the header of bench/embedding_bandwidth.cpp)");
  }
  if (a.rows < 1 || a.dim < 1 || a.batch < 1 || a.slots < 1 || a.reps < 1 || !(a.zipf > 0) || a.zipf == 1.0)
    throw UserError("--rows, --dim, --batch, --slots, --reps must be positive and --zipf positive and not 1");
  return a;
}

// Ids of one slot: Zipf ranks over [1, rows] from the continuous inverse CDF, scattered.
std::vector<int64_t> zipf_ids(int64_t n, int64_t rows, double s, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double top = std::pow(static_cast<double>(rows), 1.0 - s);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) {
    const double r = std::pow((top - 1.0) * u(rng) + 1.0, 1.0 / (1.0 - s));
    const int64_t rank = std::min<int64_t>(rows, std::max<int64_t>(1, static_cast<int64_t>(r))) - 1;
    id = static_cast<int64_t>((static_cast<unsigned __int128>(rank) * 2654435761u) % static_cast<uint64_t>(rows));
  }
  return ids;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int run(const Args& a) {
  std::string why;
  if (!cuda_register_if_available(&why)) {
    std::fprintf(stderr, "ncsrec_bench_embedding needs a GPU: %s\n", why.c_str());
    return 2;
  }
  const OpTable& gpu = ops_for(Device::CUDA);
  const std::string device = cuda_device_description(cuda_select_device_index(cuda_device_count()));

  // The copy: a buffer the table's size to another.
  const size_t table_bytes = static_cast<size_t>(a.rows * a.dim) * sizeof(float);
  void* src = gpu.alloc(table_bytes);
  void* dst = gpu.alloc(table_bytes);
  gpu.memset_zero(src, table_bytes);
  for (int i = 0; i < 3; ++i) gpu.copy(dst, src, table_bytes, CopyKind::DeviceToDevice);
  gpu.synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < a.reps; ++i) gpu.copy(dst, src, table_bytes, CopyKind::DeviceToDevice);
  gpu.synchronize();
  const double copy_s = seconds_since(t0) / static_cast<double>(a.reps);
  const double copy_gbs = 2.0 * static_cast<double>(table_bytes) / copy_s / 1e9;
  gpu.free(src);
  gpu.free(dst);

  // The table and one batch of `slots` one-id bags each.
  CudaEmbeddingOptions o;
  o.name = "bench";
  o.hash = a.hash;
  o.rows = a.rows;
  o.dim = a.dim;
  o.optimizer = "adagrad";
  CudaEmbeddingTable table(o);
  std::mt19937_64 rng(7);
  std::vector<int64_t> offsets(static_cast<size_t>(a.batch + 1));
  for (int64_t b = 0; b <= a.batch; ++b) offsets[static_cast<size_t>(b)] = b;
  std::unordered_set<int64_t> unique;
  std::vector<void*> device_ids;
  void* device_offsets = gpu.alloc(offsets.size() * sizeof(int64_t));
  gpu.copy(device_offsets, offsets.data(), offsets.size() * sizeof(int64_t), CopyKind::HostToDevice);
  std::vector<CudaEmbeddingTable::Slot> slots;
  for (int64_t s = 0; s < a.slots; ++s) {
    const std::vector<int64_t> ids = zipf_ids(a.batch, a.rows, a.zipf, rng);
    unique.insert(ids.begin(), ids.end());
    device_ids.push_back(gpu.alloc(ids.size() * sizeof(int64_t)));
    gpu.copy(device_ids.back(), ids.data(), ids.size() * sizeof(int64_t), CopyKind::HostToDevice);
    slots.push_back({static_cast<const int64_t*>(device_offsets), static_cast<const int64_t*>(device_ids.back()),
                     a.batch, s * a.dim});
  }
  const int64_t out_cols = a.slots * a.dim, nnz = a.batch * a.slots;
  float* out = static_cast<float*>(gpu.alloc(static_cast<size_t>(a.batch * out_cols) * sizeof(float)));
  float* dout = static_cast<float*>(gpu.alloc(static_cast<size_t>(a.batch * out_cols) * sizeof(float)));
  gpu.memset_zero(dout, static_cast<size_t>(a.batch * out_cols) * sizeof(float));

  // Lookup only (inference: nothing inserted, nothing kept), then forward + backward + update.
  auto time_per_rep = [&](auto&& step) {
    for (int i = 0; i < 3; ++i) step();
    gpu.synchronize();
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < a.reps; ++i) step();
    gpu.synchronize();
    return seconds_since(start) / static_cast<double>(a.reps);
  };
  if (a.hash) table.forward(slots, a.batch, out, out_cols, /*training=*/true);  // insert the ids once
  const double lookup_s = time_per_rep([&] { table.forward(slots, a.batch, out, out_cols, /*training=*/false); });
  const double train_s = time_per_rep([&] {
    table.forward(slots, a.batch, out, out_cols, /*training=*/true);
    table.backward_update(dout, out_cols);
  });

  const double row_bytes = static_cast<double>(a.dim) * sizeof(float);
  const double out_bytes = static_cast<double>(a.batch * out_cols) * sizeof(float);
  const double index_bytes = static_cast<double>(nnz + a.slots * (a.batch + 1)) * sizeof(int64_t);
  const double all_bytes = static_cast<double>(nnz) * row_bytes + out_bytes + index_bytes;
  const double unique_bytes = static_cast<double>(unique.size()) * row_bytes + out_bytes + index_bytes;
  const double lookup_gbs = all_bytes / lookup_s / 1e9, unique_gbs = unique_bytes / lookup_s / 1e9;

  std::printf("ncsrec_bench_embedding: %s\n", device.c_str());
  std::printf("  table: %s, %lld rows x %lld (%.0f MB); batch %lld x %lld one-id slots, Zipf %.3g: %lld ids, %zu "
              "distinct\n",
              a.hash ? "hash" : "fixed", static_cast<long long>(a.rows), static_cast<long long>(a.dim),
              static_cast<double>(table_bytes) / 1e6, static_cast<long long>(a.batch),
              static_cast<long long>(a.slots), a.zipf, static_cast<long long>(nnz), unique.size());
  std::printf("  %-44s %10s %12s %10s\n", "", "ms", "GB/s", "of copy");
  std::printf("  %-44s %10.3f %12.1f %9.0f%%\n", "device-to-device copy (read + write)", copy_s * 1e3, copy_gbs, 100.0);
  std::printf("  %-44s %10.3f %12.1f %9.0f%%\n", "pooled lookup, every id's row", lookup_s * 1e3, lookup_gbs,
              100 * lookup_gbs / copy_gbs);
  std::printf("  %-44s %10.3f %12.1f %9.0f%%\n", "pooled lookup, each distinct row once", lookup_s * 1e3, unique_gbs,
              100 * unique_gbs / copy_gbs);
  std::printf("  %-44s %10.3f\n", "forward + backward + Adagrad update", train_s * 1e3);
  if (!a.json.empty()) {
    std::ofstream f(a.json);
    f << "{\"device\": \"" << device << "\", \"rows\": " << a.rows << ", \"dim\": " << a.dim
      << ", \"batch\": " << a.batch << ", \"slots\": " << a.slots << ", \"zipf\": " << a.zipf
      << ", \"hash\": " << (a.hash ? "true" : "false") << ", \"ids\": " << nnz << ", \"distinct\": " << unique.size()
      << ", \"copy_ms\": " << copy_s * 1e3 << ", \"copy_gb_s\": " << copy_gbs << ", \"lookup_ms\": " << lookup_s * 1e3
      << ", \"lookup_gb_s\": " << lookup_gbs << ", \"lookup_unique_gb_s\": " << unique_gbs
      << ", \"train_step_ms\": " << train_s * 1e3 << "}\n";
    if (!f) throw UserError("cannot write " + a.json);
  }
  for (void* p : device_ids) gpu.free(p);
  gpu.free(device_offsets);
  gpu.free(out);
  gpu.free(dout);
  return 0;
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  try {
    return ncsrec::run(ncsrec::parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
