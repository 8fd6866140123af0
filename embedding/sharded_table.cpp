// Embedding placement over ranks (CPU): shard construction, the forward exchange of unique rows
// and the backward reduction of their gradients (see sharded_table.h for the byte formula).
//
// Both exchanges follow one pattern: counts first (all-to-all of one I64 per rank), then the
// payload, grouped by destination rank, rows increasing within a group. The lookup's request
// order (Lookup::send_order) is reused by the backward, so the gradient of the common case (a
// gradient row for every row read) needs no row ids at all: the owner already knows which rows
// it served, in which order. Gradients are summed per row in rank order (sort by (row, position
// in the rank-ordered receive buffer), then a segment sum), so the result does not depend on
// thread count.
#include "embedding/sharded_table.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "core/device_table.h"
#include "core/error.h"
#include "core/huge_pages.h"
#include "core/random.h"

namespace ncsrec {
namespace {

constexpr int64_t kParallelMinRows = 256;  // below this, threads cost more than they save

std::vector<int64_t> owned_rows(int64_t rows, Placement placement, int table_rank, int rank, int world) {
  std::vector<int64_t> out;
  const bool all = world == 1 || placement == Placement::Replicated ||
                   (placement == Placement::TableWise && rank == table_rank);
  if (all) {
    out.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) out[static_cast<size_t>(r)] = r;
  } else if (placement == Placement::RowWise) {
    for (int64_t r = 0; r < rows; ++r)
      if (row_owner(r, world) == rank) out.push_back(r);
  }
  return out;
}

void check_shape(const std::string& name, int64_t rows, int64_t dim, int table_rank, int rank, int world) {
  NCSREC_CHECK(rows > 0 && dim > 0, "sharded table " << name << " needs positive shape, got [" << rows << ", " << dim
                                                     << "]");
  NCSREC_CHECK(world >= 1 && rank >= 0 && rank < world, "sharded table " << name << " on rank " << rank << " of "
                                                                         << world);
  NCSREC_CHECK(table_rank >= 0 && table_rank < world,
               "sharded table " << name << ": table rank " << table_rank << " outside [0, " << world << ")");
}

// The shard: the whole table built directly when it holds every row, else the owned rows.
EmbeddingTable make_shard(const std::string& name, const std::vector<int64_t>& global_rows, int64_t rows, int64_t dim,
                          DType dtype, uint64_t seed, double init_scale) {
  if (static_cast<int64_t>(global_rows.size()) == rows) return EmbeddingTable(name, rows, dim, dtype, seed, init_scale);
  return EmbeddingTable(name, global_rows, dim, dtype, seed, init_scale);
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

std::vector<int64_t> times(const std::vector<int64_t>& v, int64_t k) {
  std::vector<int64_t> out(v);
  for (int64_t& x : out) x *= k;
  return out;
}

// Counts exchange: element r of `send` goes to rank r; returns what each rank sent here.
std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send, Communicator& comm) {
  const std::vector<int64_t> ones(send.size(), 1);
  std::vector<int64_t> recv(send.size(), 0);
  comm.all_to_all_v(send.data(), ones.data(), recv.data(), ones.data(), DType::I64);
  return recv;
}

// One gradient contribution: (shard row, its row in the rank-ordered buffer of values).
using Contribution = std::pair<int64_t, int64_t>;

// Sums contributions per shard row. Positions increase with the sending rank, so sorting by
// (row, position) puts each row's contributions in rank order.
template <class T>
SparseGrad sum_by_row(std::vector<Contribution>& contributions, const T* values, int64_t dim, DType dtype) {
  std::sort(contributions.begin(), contributions.end());
  SparseGrad grad;
  std::vector<int64_t> segment_begin;
  for (size_t i = 0; i < contributions.size(); ++i) {
    if (i == 0 || contributions[i].first != contributions[i - 1].first) {
      grad.rows.push_back(contributions[i].first);
      segment_begin.push_back(static_cast<int64_t>(i));
    }
  }
  segment_begin.push_back(static_cast<int64_t>(contributions.size()));
  const int64_t unique = static_cast<int64_t>(grad.rows.size());
  grad.values = Tensor::empty({unique, dim}, dtype, Device::CPU);
  T* out = grad.values.data<T>();
#pragma omp parallel for schedule(static) if (unique >= kParallelMinRows)
  for (int64_t u = 0; u < unique; ++u) {
    T* v = out + u * dim;  // [dim]
    for (int64_t d = 0; d < dim; ++d) v[d] = T(0);
    for (int64_t i = segment_begin[static_cast<size_t>(u)]; i < segment_begin[static_cast<size_t>(u) + 1]; ++i) {
      const T* g = values + contributions[static_cast<size_t>(i)].second * dim;
      for (int64_t d = 0; d < dim; ++d) v[d] += g[d];
    }
  }
  return grad;
}

// Replicated: every rank gathers every rank's (global rows, values) and sums them in rank order.
template <class T>
SparseGrad all_gather_gradient(const std::vector<int64_t>& global_rows, const Tensor& values, int64_t dim,
                               Communicator& comm) {
  const T* v = values.data<T>();
  const std::vector<T> mine(v, v + static_cast<int64_t>(global_rows.size()) * dim);
  const std::vector<int64_t> all_rows = all_gather_v(comm, global_rows);
  const std::vector<T> all_values = all_gather_v(comm, mine);
  NCSREC_CHECK(static_cast<int64_t>(all_values.size()) == static_cast<int64_t>(all_rows.size()) * dim,
               "replicated gradient: gathered " << all_rows.size() << " rows but " << all_values.size() << " values");
  std::vector<Contribution> contributions(all_rows.size());
  for (size_t i = 0; i < all_rows.size(); ++i) contributions[i] = {all_rows[i], static_cast<int64_t>(i)};
  return sum_by_row(contributions, all_values.data(), dim, dtype_of<T>());
}

void copy_row(void* dst, int64_t dst_row, const void* src, int64_t src_row, int64_t row_bytes) {
  std::memcpy(static_cast<char*>(dst) + dst_row * row_bytes, static_cast<const char*>(src) + src_row * row_bytes,
              static_cast<size_t>(row_bytes));
}

}  // namespace

Placement parse_placement(const std::string& s) {
  if (s == "row_wise") return Placement::RowWise;
  if (s == "table_wise") return Placement::TableWise;
  if (s == "replicated") return Placement::Replicated;
  throw UserError("unknown embedding placement '" + s + "'; valid placements: row_wise, table_wise, replicated");
}

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::RowWise: return "row_wise";
    case Placement::TableWise: return "table_wise";
    case Placement::Replicated: return "replicated";
  }
  return "?";
}

int row_owner(int64_t row, int world_size) {
  NCSREC_CHECK(world_size >= 1, "row owner over " << world_size << " ranks");
  return static_cast<int>(mix64(static_cast<uint64_t>(row)) % static_cast<uint64_t>(world_size));
}

ShardedTable::ShardedTable(std::string name, int64_t rows, int64_t dim, DType dtype, uint64_t seed,
                           double init_scale, Placement placement, int table_rank, int rank, int world_size,
                           const HashOptions* hash)
    : rows_((check_shape(name, hash ? std::max<int64_t>(hash->capacity, 1) : rows, dim, table_rank, rank, world_size),
             hash ? hash->capacity : rows)),
      dim_(dim),
      dtype_(dtype),
      placement_(placement),
      table_rank_(table_rank),
      rank_(rank),
      world_(world_size),
      holds_all_rows_(!hash && (world_size == 1 || placement == Placement::Replicated ||
                                (placement == Placement::TableWise && rank == table_rank))),
      hashed_(hash != nullptr),
      hash_(hash ? *hash : HashOptions{}),
      shard_(hash ? EmbeddingTable(name, std::vector<int64_t>{}, dim, dtype, seed, init_scale)
                  : make_shard(name, owned_rows(rows, placement, table_rank, rank, world_size), rows, dim, dtype, seed,
                               init_scale)) {
  if (hashed_) {
    NCSREC_CHECK(placement != Placement::Replicated || world_size == 1,
                 "hash table " << shard_.name() << " cannot be replicated (each rank would insert other ids)");
    NCSREC_CHECK(hash_.capacity > 0 && hash_.admit_after >= 1 && hash_.ttl_days >= 0,
                 "hash table " << shard_.name() << ": capacity " << hash_.capacity << ", admit_after "
                               << hash_.admit_after << ", ttl_days " << hash_.ttl_days);
    rebuild_index();
  }
}

int ShardedTable::owner(int64_t row) const {
  NCSREC_CHECK(hashed_ || (row >= 0 && row < rows_), "row " << row << " outside table " << name() << " of " << rows_ << " rows");
  if (world_ == 1 || placement_ == Placement::Replicated) return rank_;
  if (placement_ == Placement::TableWise) return table_rank_;
  return row_owner(row, world_);
}

int64_t ShardedTable::rank_capacity() const {
  if (world_ == 1 || placement_ != Placement::RowWise) return rows_;
  return (rows_ + world_ - 1) / world_;
}

namespace {

inline size_t probe_start(int64_t key, size_t mask) { return static_cast<size_t>(mix64(static_cast<uint64_t>(key))) & mask; }

}  // namespace

void ShardedTable::prefetch_index_slot(int64_t key) const {
  if (!index_.empty()) prefetch_row(&index_[probe_start(key, index_.size() - 1)], sizeof(index_[0]));
}

int64_t ShardedTable::shard_index(int64_t row) const {
  if (hashed_) {
    const size_t mask = index_.size() - 1;
    for (size_t i = probe_start(row, mask);; i = (i + 1) & mask) {
      if (index_[i].row < 0) return -1;
      if (index_[i].key == row) return index_[i].row;
    }
  }
  if (row < 0 || row >= rows_) return -1;
  if (holds_all_rows_) return row;
  const RowColumn& keys = shard_.keys();
  const auto it = std::lower_bound(keys.begin(), keys.end(), row);
  return (it != keys.end() && *it == row) ? static_cast<int64_t>(it - keys.begin()) : -1;
}

// The index at most half full: a power of two >= 2 · (rows + 1), rebuilt when rows exceed half.
void ShardedTable::rebuild_index() {
  size_t size = 16;
  while (size < 2 * static_cast<size_t>(shard_.rows() + 1)) size *= 2;
  index_.assign(size, IndexSlot{});
  const size_t mask = size - 1;
  const RowColumn& keys = shard_.keys();
  for (size_t r = 0; r < keys.size(); ++r) {
    size_t i = probe_start(keys[r], mask);
    while (index_[i].row >= 0) i = (i + 1) & mask;
    index_[i] = {keys[r], static_cast<int64_t>(r)};
  }
}

void ShardedTable::drop_rows(const std::vector<uint8_t>& drop) {
  std::vector<int64_t> keep;
  keep.reserve(static_cast<size_t>(shard_.rows()));
  for (int64_t r = 0; r < shard_.rows(); ++r)
    if (!drop[static_cast<size_t>(r)]) keep.push_back(r);
  shard_.keep_rows(keep);
  rebuild_index();
}

// Evicts the least recently seen rows not in `protected_keys` (sorted) so that `wanted` more
// rows fit, plus a tenth of the capacity.
void ShardedTable::make_room(int64_t wanted, const std::vector<int64_t>& protected_keys) {
  const int64_t cap = rank_capacity(), rows = shard_.rows();
  if (rows + wanted <= cap) return;
  if (!hash_.evict_when_full || wanted > cap)
    throw UserError("hash table " + name() + " is full: rank " + std::to_string(rank_) + " holds " +
                    std::to_string(rows) + " of its " + std::to_string(cap) + " rows (capacity " +
                    std::to_string(rows_) + " over " + std::to_string(world_) + " rank(s)) and this batch brings " +
                    std::to_string(wanted) + " new ids; raise model.tables." + name() +
                    ".capacity, or set evict_when_full: true or ttl_days");
  const int64_t evict = std::min(rows, rows + wanted - cap + cap / 10);
  const std::vector<int64_t> victims = least_recently_seen(shard_.keys().data(), shard_.last_seen_day().data(),
                                                           shard_.updated_step().data(), rows, protected_keys, evict);
  const auto n = static_cast<int64_t>(victims.size());
  if (rows - n + wanted > cap)
    throw UserError("hash table " + name() + " is full: rank " + std::to_string(rank_) + " cannot evict enough rows "
                    "for this batch: it brings " + std::to_string(wanted) + " new ids, and only " + std::to_string(n) +
                    " of the rank's " + std::to_string(rows) + " rows are not read by it; raise model.tables." +
                    name() + ".capacity");
  std::vector<uint8_t> drop(static_cast<size_t>(rows), 0);
  for (const int64_t r : victims) drop[static_cast<size_t>(r)] = 1;
  drop_rows(drop);
  stats_.evicted_full += n;
}

std::vector<int64_t> ShardedTable::resolve(const std::vector<int64_t>& keys, const int64_t* occurrences, bool training) {
  const size_t n = keys.size();
  std::vector<int64_t> out(n, -1);
  if (!hashed_) {
    for (size_t j = 0; j < n; ++j) {
      out[j] = shard_index(keys[j]);
      NCSREC_CHECK(out[j] >= 0, "table " << name() << " (" << placement_name(placement_) << "): rank " << rank_
                                         << " was asked for row " << keys[j] << ", which it does not hold");
      if (training) {
        shard_.count()[static_cast<size_t>(out[j])] += occurrences ? occurrences[j] : 1;
        shard_.last_seen_day()[static_cast<size_t>(out[j])] = day_;
      }
    }
    return out;
  }
  if (!training) {
    for (size_t j = 0; j < n; ++j) {
      if (j + kPrefetchAhead < n) prefetch_index_slot(keys[j + kPrefetchAhead]);
      out[j] = shard_index(keys[j]);
    }
    return out;
  }
  // Occurrences per distinct id (several ranks may ask for one id), in increasing id order.
  std::vector<size_t> order(n);
  for (size_t j = 0; j < n; ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
  std::vector<int64_t> distinct, total;
  for (size_t j : order) {
    const int64_t occ = occurrences ? occurrences[j] : 1;
    if (!distinct.empty() && distinct.back() == keys[j]) total.back() += occ;
    else {
      distinct.push_back(keys[j]);
      total.push_back(occ);
    }
  }
  std::vector<int64_t> admit, admit_count;
  for (size_t u = 0; u < distinct.size(); ++u) {
    if (u + kPrefetchAhead < distinct.size()) prefetch_index_slot(distinct[u + kPrefetchAhead]);
    const int64_t row = shard_index(distinct[u]);
    if (row >= 0) {
      shard_.count()[static_cast<size_t>(row)] += total[u];
      shard_.last_seen_day()[static_cast<size_t>(row)] = day_;
      continue;
    }
    auto it = pending_.find(distinct[u]);
    const int64_t seen = (it == pending_.end() ? 0 : it->second.count) + total[u];
    if (seen >= hash_.admit_after) {
      admit.push_back(distinct[u]);
      admit_count.push_back(seen);
      if (it != pending_.end()) pending_.erase(it);
    } else {
      pending_[distinct[u]] = Pending{seen, day_};
    }
  }
  if (!admit.empty()) {
    make_room(static_cast<int64_t>(admit.size()), distinct);
    const int64_t first = shard_.append(admit);
    for (size_t a = 0; a < admit.size(); ++a) {
      shard_.count()[static_cast<size_t>(first) + a] = admit_count[a];
      shard_.last_seen_day()[static_cast<size_t>(first) + a] = day_;
    }
    stats_.inserted += static_cast<int64_t>(admit.size());
    if (2 * static_cast<size_t>(shard_.rows() + 1) > index_.size()) rebuild_index();
    else {
      const size_t mask = index_.size() - 1;
      for (size_t a = 0; a < admit.size(); ++a) {
        size_t i = probe_start(admit[a], mask);
        while (index_[i].row >= 0) i = (i + 1) & mask;
        index_[i] = {admit[a], first + static_cast<int64_t>(a)};
      }
    }
  }
  for (size_t j = 0; j < n; ++j) out[j] = shard_index(keys[j]);
  return out;
}

void ShardedTable::start_day(int64_t day) {
  day_ = day;
  if (!hashed_ || hash_.ttl_days <= 0 || day < 0) return;
  const RowColumn& seen = shard_.last_seen_day();
  auto stale = [&](int64_t last) { return last >= 0 && day - last > hash_.ttl_days; };
  std::vector<uint8_t> drop(static_cast<size_t>(shard_.rows()), 0);
  int64_t dropped = 0;
  for (size_t r = 0; r < drop.size(); ++r)
    if (stale(seen[r])) {
      drop[r] = 1;
      ++dropped;
    }
  if (dropped > 0) drop_rows(drop);
  stats_.evicted_ttl += dropped;
  for (auto it = pending_.begin(); it != pending_.end();)
    it = stale(it->second.last_seen_day) ? pending_.erase(it) : std::next(it);
}

void ShardedTable::count_reads(const int64_t* ids, int64_t n) {
  NCSREC_CHECK(!hashed_ && holds_all_rows_, "table " << name() << ": count_reads is for a fixed table held whole");
  RowColumn& count = shard_.count();
  RowColumn& seen = shard_.last_seen_day();
  for (int64_t k = 0; k < n; ++k) {
    const size_t r = static_cast<size_t>(embedding_row(ids[k], rows_));
    ++count[r];
    seen[r] = day_;
  }
}

void ShardedTable::insert_owned(const std::vector<int64_t>& ids) {
  if (!hashed_) return;
  std::vector<int64_t> add;  // in the order given
  std::unordered_set<int64_t> seen;
  for (int64_t id : ids)
    if (owner(id) == rank_ && shard_index(id) < 0 && seen.insert(id).second) add.push_back(id);
  if (shard_.rows() + static_cast<int64_t>(add.size()) > rank_capacity())
    throw UserError("hash table " + name() + ": the checkpoint holds more rows than rank " + std::to_string(rank_) +
                    " may (" + std::to_string(rank_capacity()) + "; capacity " + std::to_string(rows_) + " over " +
                    std::to_string(world_) + " rank(s)); raise model.tables." + name() + ".capacity");
  shard_.append(add);
  rebuild_index();
}

void ShardedTable::adopt_trained(const std::vector<int64_t>& ids,
                                 const std::vector<std::pair<int64_t, Pending>>& pending, int64_t inserted,
                                 int64_t evicted_full) {
  if (!hashed_) return;
  const std::unordered_set<int64_t> kept(ids.begin(), ids.end());
  const RowColumn& keys = shard_.keys();
  std::vector<uint8_t> drop(keys.size(), 0);
  bool any = false;
  for (size_t r = 0; r < keys.size(); ++r)
    if (!kept.count(keys[r])) {
      drop[r] = 1;
      any = true;
    }
  if (any) drop_rows(drop);
  insert_owned(ids);
  pending_.clear();
  for (const auto& [id, p] : pending) set_pending(id, p);
  stats_.inserted += inserted;
  stats_.evicted_full += evicted_full;
}

std::vector<std::pair<int64_t, ShardedTable::Pending>> ShardedTable::pending() const {
  std::vector<std::pair<int64_t, Pending>> out(pending_.begin(), pending_.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void ShardedTable::set_pending(int64_t id, Pending p) {
  if (hashed_ && owner(id) == rank_) pending_[id] = p;
}

HashStats ShardedTable::hash_stats() const {
  HashStats s = stats_;
  s.rows = shard_.rows();
  s.pending = static_cast<int64_t>(pending_.size());
  return s;
}

void ShardedTable::check_comm(const Communicator* comm, const char* call) const {
  if (!comm) {
    NCSREC_CHECK(world_ == 1, "table " << name() << " placed for rank " << rank_ << " of " << world_ << " called "
                                        << call << " without a communicator");
    return;
  }
  NCSREC_CHECK(comm->world_size() == world_ && comm->rank() == rank_,
               "table " << name() << " placed for rank " << rank_ << " of " << world_ << " called " << call
                        << " with a communicator of rank " << comm->rank() << " of " << comm->world_size());
}

void ShardedTable::lookup(const std::vector<IdsView>& slots, Communicator* comm, Lookup* out, bool training) {
  check_comm(comm, "lookup");
  NCSREC_CHECK(out != nullptr, "table " << name() << ": lookup into a null result");
  Lookup& L = *out;

  // Unique rows read, each id as an index into them, and how often each row is read.
  L.rows.clear();
  for (size_t s = 0; s < slots.size(); ++s) {
    const IdsView& slot = slots[s];
    NCSREC_CHECK(slot.count >= 0 && (slot.count == 0 || slot.ids != nullptr),
                 "table " << name() << ": slot " << s << " has " << slot.count << " ids at " << slot.ids);
    for (int64_t k = 0; k < slot.count; ++k) L.rows.push_back(row_of(slot.ids[k]));
  }
  std::sort(L.rows.begin(), L.rows.end());
  L.rows.erase(std::unique(L.rows.begin(), L.rows.end()), L.rows.end());
  const int64_t unique = static_cast<int64_t>(L.rows.size()), bytes = row_bytes();
  std::vector<int64_t> occurrences(training ? static_cast<size_t>(unique) : 0, 0);
  L.ids.resize(slots.size());
  for (size_t s = 0; s < slots.size(); ++s) {
    std::vector<int64_t>& ids = L.ids[s];
    ids.resize(static_cast<size_t>(slots[s].count));
    for (int64_t k = 0; k < slots[s].count; ++k) {
      const int64_t row = row_of(slots[s].ids[k]);
      ids[static_cast<size_t>(k)] = std::lower_bound(L.rows.begin(), L.rows.end(), row) - L.rows.begin();
      if (training) ++occurrences[static_cast<size_t>(ids[static_cast<size_t>(k)])];
    }
  }

  L.values = Tensor::empty({std::max<int64_t>(unique, 1), dim_}, dtype_, Device::CPU);
  if (unique == 0) L.values.zero_();
  L.send_counts.clear();
  L.recv_counts.clear();
  L.send_order.clear();
  L.requested.clear();
  L.requested_shard_rows.clear();

  if (world_ == 1 || placement_ == Placement::Replicated) {  // every row is here
    // Replicated over several ranks: each rank reads its own batch, so no rank can keep the
    // counters of all reads; they stay as they are.
    const bool count = training && world_ == 1;
    L.requested_shard_rows = resolve(L.rows, count ? occurrences.data() : nullptr, count);
    const void* shard_values = shard_.values().raw();  // after resolve: insertions may move the rows
    for (int64_t i = 0; i < unique; ++i) {
      if (i + kPrefetchAhead < unique) {  // rows scattered over the shard
        const int64_t ahead = L.requested_shard_rows[static_cast<size_t>(i + kPrefetchAhead)];
        if (ahead >= 0) prefetch_row(static_cast<const char*>(shard_values) + ahead * bytes, static_cast<size_t>(bytes));
      }
      const int64_t r = L.requested_shard_rows[static_cast<size_t>(i)];
      if (r >= 0) copy_row(L.values.raw(), i, shard_values, r, bytes);
      else std::memset(static_cast<char*>(L.values.raw()) + i * bytes, 0, static_cast<size_t>(bytes));
    }
    return;
  }

  // Requests grouped by owner rank, rows increasing within a group.
  const int W = world_;
  L.send_counts.assign(static_cast<size_t>(W), 0);
  for (int64_t row : L.rows) ++L.send_counts[static_cast<size_t>(owner(row))];
  std::vector<int64_t> cursor(static_cast<size_t>(W), 0);
  for (int r = 1; r < W; ++r) cursor[static_cast<size_t>(r)] = cursor[static_cast<size_t>(r) - 1] + L.send_counts[static_cast<size_t>(r) - 1];
  L.send_order.resize(static_cast<size_t>(unique));
  std::vector<int64_t> request(static_cast<size_t>(unique)), request_occurrences(training ? static_cast<size_t>(unique) : 0);
  for (int64_t i = 0; i < unique; ++i) {
    const int64_t pos = cursor[static_cast<size_t>(owner(L.rows[static_cast<size_t>(i)]))]++;
    L.send_order[static_cast<size_t>(pos)] = i;
    request[static_cast<size_t>(pos)] = L.rows[static_cast<size_t>(i)];
    if (training) request_occurrences[static_cast<size_t>(pos)] = occurrences[static_cast<size_t>(i)];
  }
  L.recv_counts = exchange_counts(L.send_counts, *comm);
  const int64_t served = sum(L.recv_counts);
  L.requested.resize(static_cast<size_t>(served));
  comm->all_to_all_v(request.data(), L.send_counts.data(), L.requested.data(), L.recv_counts.data(), DType::I64);
  std::vector<int64_t> requested_occurrences(training ? static_cast<size_t>(served) : 0);
  if (training)
    comm->all_to_all_v(request_occurrences.data(), L.send_counts.data(), requested_occurrences.data(),
                       L.recv_counts.data(), DType::I64);

  // Owner side: the requested rows' values, in receive order (zeros for ids without a row).
  L.requested_shard_rows = resolve(L.requested, training ? requested_occurrences.data() : nullptr, training);
  const void* shard_values = shard_.values().raw();
  Tensor reply = Tensor::empty({served, dim_}, dtype_, Device::CPU);
  for (int64_t j = 0; j < served; ++j) {
    const int64_t index = L.requested_shard_rows[static_cast<size_t>(j)];
    if (index >= 0) copy_row(reply.raw(), j, shard_values, index, bytes);
    else std::memset(static_cast<char*>(reply.raw()) + j * bytes, 0, static_cast<size_t>(bytes));
  }
  Tensor received = Tensor::empty({unique, dim_}, dtype_, Device::CPU);
  const std::vector<int64_t> reply_counts = times(L.recv_counts, dim_), received_counts = times(L.send_counts, dim_);
  comm->all_to_all_v(reply.raw(), reply_counts.data(), received.raw(), received_counts.data(), dtype_);
  for (int64_t pos = 0; pos < unique; ++pos)
    copy_row(L.values.raw(), L.send_order[static_cast<size_t>(pos)], received.raw(), pos, bytes);
}

SparseGrad ShardedTable::reduce_gradient(const Lookup& lookup, const SparseGrad& grad, Communicator* comm) const {
  check_comm(comm, "reduce_gradient");
  const int64_t unique = static_cast<int64_t>(lookup.rows.size());
  const int64_t n = static_cast<int64_t>(grad.rows.size());
  NCSREC_CHECK(grad.values.defined() && grad.values.dtype() == dtype_ && grad.values.device() == Device::CPU &&
                   grad.values.ndim() == 2 && grad.values.dim(0) == n && grad.values.dim(1) == dim_,
               "table " << name() << ": gradient of " << n << " rows is "
                        << (grad.values.defined() ? grad.values.describe() : std::string("undefined")) << ", want "
                        << dtype_name(dtype_) << "[" << n << ", " << dim_ << "] on cpu");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = grad.rows[static_cast<size_t>(i)];
    NCSREC_CHECK(r >= 0 && r < unique, "table " << name() << ": gradient row " << r << " is not one of the " << unique
                                                << " rows of the lookup");
    NCSREC_CHECK(i == 0 || r > grad.rows[static_cast<size_t>(i) - 1],
                 "table " << name() << ": gradient rows must be sorted and unique");
  }

  if (world_ == 1) {  // compact rows -> their shard rows (a fixed table: the global rows, increasing)
    NCSREC_CHECK(static_cast<int64_t>(lookup.requested_shard_rows.size()) == unique,
                 "table " << name() << ": reduce_gradient needs the Lookup its lookup() filled");
    if (!hashed_) {
      SparseGrad out;
      out.rows.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) out.rows[static_cast<size_t>(i)] = lookup.rows[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])];
      out.values = grad.values;
      return out;
    }
    std::vector<Contribution> contributions;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = lookup.requested_shard_rows[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])];
      if (r >= 0) contributions.push_back({r, i});
    }
    return dtype_ == DType::F32 ? sum_by_row(contributions, grad.values.data<float>(), dim_, dtype_)
                                : sum_by_row(contributions, grad.values.data<double>(), dim_, dtype_);
  }
  if (placement_ == Placement::Replicated) {
    std::vector<int64_t> global_rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) global_rows[static_cast<size_t>(i)] = lookup.rows[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])];
    return dtype_ == DType::F32 ? all_gather_gradient<float>(global_rows, grad.values, dim_, *comm)
                                : all_gather_gradient<double>(global_rows, grad.values, dim_, *comm);
  }

  // RowWise / TableWise: the reverse of the lookup's request. Per owner: the gradient rows in
  // request order, and only when some requested row has no gradient, their positions in the request.
  const int W = world_;
  NCSREC_CHECK(static_cast<int64_t>(lookup.send_order.size()) == unique &&
                   static_cast<int>(lookup.send_counts.size()) == W && static_cast<int>(lookup.recv_counts.size()) == W,
               "table " << name() << ": reduce_gradient needs the Lookup its lookup() filled");
  std::vector<int64_t> grad_index(static_cast<size_t>(unique), -1);  // compact row -> row of `grad`
  for (int64_t i = 0; i < n; ++i) grad_index[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])] = i;
  std::vector<int64_t> grad_counts(static_cast<size_t>(W), 0), id_counts(static_cast<size_t>(W), 0);
  std::vector<int64_t> ids;  // positions within the owner's request block, where needed
  Tensor send = Tensor::empty({n, dim_}, dtype_, Device::CPU);
  const int64_t bytes = row_bytes();
  int64_t pos = 0, sent = 0;
  for (int r = 0; r < W; ++r) {
    const int64_t block = lookup.send_counts[static_cast<size_t>(r)];
    for (int64_t j = 0; j < block; ++j, ++pos) {
      const int64_t g = grad_index[static_cast<size_t>(lookup.send_order[static_cast<size_t>(pos)])];
      if (g < 0) continue;
      copy_row(send.raw(), sent++, grad.values.raw(), g, bytes);
      ++grad_counts[static_cast<size_t>(r)];
    }
  }
  int64_t begin = 0;
  for (int r = 0; r < W; ++r) {
    const int64_t block = lookup.send_counts[static_cast<size_t>(r)];
    if (grad_counts[static_cast<size_t>(r)] != block) {
      id_counts[static_cast<size_t>(r)] = grad_counts[static_cast<size_t>(r)];
      for (int64_t j = 0; j < block; ++j)
        if (grad_index[static_cast<size_t>(lookup.send_order[static_cast<size_t>(begin + j)])] >= 0) ids.push_back(j);
    }
    begin += block;
  }

  const std::vector<int64_t> recv_grad_counts = exchange_counts(grad_counts, *comm);
  std::vector<int64_t> recv_id_counts(static_cast<size_t>(W), 0);
  for (int s = 0; s < W; ++s) {
    const int64_t got = recv_grad_counts[static_cast<size_t>(s)], served = lookup.recv_counts[static_cast<size_t>(s)];
    NCSREC_CHECK(got <= served, "table " << name() << ": rank " << s << " sends gradients of " << got
                                         << " rows but read only " << served << " rows from rank " << rank_);
    recv_id_counts[static_cast<size_t>(s)] = got == served ? 0 : got;
  }
  std::vector<int64_t> recv_ids(static_cast<size_t>(sum(recv_id_counts)));
  comm->all_to_all_v(ids.data(), id_counts.data(), recv_ids.data(), recv_id_counts.data(), DType::I64);
  const int64_t received = sum(recv_grad_counts);
  Tensor values = Tensor::empty({received, dim_}, dtype_, Device::CPU);
  const std::vector<int64_t> send_elems = times(grad_counts, dim_), recv_elems = times(recv_grad_counts, dim_);
  comm->all_to_all_v(send.raw(), send_elems.data(), values.raw(), recv_elems.data(), dtype_);

  // Owner side: the shard row of every received gradient row, in rank order.
  std::vector<Contribution> contributions;
  contributions.reserve(static_cast<size_t>(received));
  int64_t k = 0, id = 0, served_begin = 0;
  for (int s = 0; s < W; ++s) {
    const int64_t got = recv_grad_counts[static_cast<size_t>(s)];
    const bool all = recv_id_counts[static_cast<size_t>(s)] == 0;
    for (int64_t j = 0; j < got; ++j, ++k) {
      const int64_t at = all ? j : recv_ids[static_cast<size_t>(id++)];
      NCSREC_CHECK(at >= 0 && at < lookup.recv_counts[static_cast<size_t>(s)],
                   "table " << name() << ": rank " << s << " sent a gradient for request position " << at);
      const int64_t row = lookup.requested_shard_rows[static_cast<size_t>(served_begin + at)];
      if (row >= 0) contributions.push_back({row, k});  // -1: an id of a hash table without a row
    }
    served_begin += lookup.recv_counts[static_cast<size_t>(s)];
  }
  return dtype_ == DType::F32 ? sum_by_row(contributions, values.data<float>(), dim_, dtype_)
                              : sum_by_row(contributions, values.data<double>(), dim_, dtype_);
}

}  // namespace ncsrec
