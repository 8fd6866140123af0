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
#include <utility>

#include "core/error.h"
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
                           double init_scale, Placement placement, int table_rank, int rank, int world_size)
    : rows_((check_shape(name, rows, dim, table_rank, rank, world_size), rows)),
      dim_(dim),
      dtype_(dtype),
      placement_(placement),
      table_rank_(table_rank),
      rank_(rank),
      world_(world_size),
      holds_all_rows_(world_size == 1 || placement == Placement::Replicated ||
                      (placement == Placement::TableWise && rank == table_rank)),
      shard_rows_(owned_rows(rows, placement, table_rank, rank, world_size)),
      shard_(make_shard(name, shard_rows_, rows, dim, dtype, seed, init_scale)) {}

int ShardedTable::owner(int64_t row) const {
  NCSREC_CHECK(row >= 0 && row < rows_, "row " << row << " outside table " << name() << " of " << rows_ << " rows");
  if (world_ == 1 || placement_ == Placement::Replicated) return rank_;
  if (placement_ == Placement::TableWise) return table_rank_;
  return row_owner(row, world_);
}

int64_t ShardedTable::shard_index(int64_t row) const {
  if (row < 0 || row >= rows_) return -1;
  if (holds_all_rows_) return row;
  const auto it = std::lower_bound(shard_rows_.begin(), shard_rows_.end(), row);
  return (it != shard_rows_.end() && *it == row) ? static_cast<int64_t>(it - shard_rows_.begin()) : -1;
}

void ShardedTable::check_comm(const Communicator& comm, const char* call) const {
  NCSREC_CHECK(comm.world_size() == world_ && comm.rank() == rank_,
               "table " << name() << " placed for rank " << rank_ << " of " << world_ << " called " << call
                        << " with a communicator of rank " << comm.rank() << " of " << comm.world_size());
}

void ShardedTable::lookup(const std::vector<IdsView>& slots, Communicator& comm, Lookup* out) const {
  check_comm(comm, "lookup");
  NCSREC_CHECK(out != nullptr, "table " << name() << ": lookup into a null result");
  Lookup& L = *out;

  // Unique rows read, and each id as an index into them.
  L.rows.clear();
  for (size_t s = 0; s < slots.size(); ++s) {
    const IdsView& slot = slots[s];
    NCSREC_CHECK(slot.count >= 0 && (slot.count == 0 || slot.ids != nullptr),
                 "table " << name() << ": slot " << s << " has " << slot.count << " ids at " << slot.ids);
    for (int64_t k = 0; k < slot.count; ++k) L.rows.push_back(embedding_row(slot.ids[k], rows_));
  }
  std::sort(L.rows.begin(), L.rows.end());
  L.rows.erase(std::unique(L.rows.begin(), L.rows.end()), L.rows.end());
  L.ids.resize(slots.size());
  for (size_t s = 0; s < slots.size(); ++s) {
    std::vector<int64_t>& ids = L.ids[s];
    ids.resize(static_cast<size_t>(slots[s].count));
    for (int64_t k = 0; k < slots[s].count; ++k) {
      const int64_t row = embedding_row(slots[s].ids[k], rows_);
      ids[static_cast<size_t>(k)] = std::lower_bound(L.rows.begin(), L.rows.end(), row) - L.rows.begin();
    }
  }

  const int64_t unique = static_cast<int64_t>(L.rows.size()), bytes = row_bytes();
  L.values = Tensor::empty({std::max<int64_t>(unique, 1), dim_}, dtype_, Device::CPU);
  if (unique == 0) L.values.zero_();
  L.send_counts.clear();
  L.recv_counts.clear();
  L.send_order.clear();
  L.requested.clear();
  L.requested_shard_rows.clear();

  const void* shard_values = shard_.values().raw();
  if (world_ == 1 || placement_ == Placement::Replicated) {  // every row is here
    for (int64_t i = 0; i < unique; ++i) copy_row(L.values.raw(), i, shard_values, L.rows[static_cast<size_t>(i)], bytes);
    return;
  }

  // Requests grouped by owner rank, rows increasing within a group.
  const int W = world_;
  L.send_counts.assign(static_cast<size_t>(W), 0);
  for (int64_t row : L.rows) ++L.send_counts[static_cast<size_t>(owner(row))];
  std::vector<int64_t> cursor(static_cast<size_t>(W), 0);
  for (int r = 1; r < W; ++r) cursor[static_cast<size_t>(r)] = cursor[static_cast<size_t>(r) - 1] + L.send_counts[static_cast<size_t>(r) - 1];
  L.send_order.resize(static_cast<size_t>(unique));
  std::vector<int64_t> request(static_cast<size_t>(unique));
  for (int64_t i = 0; i < unique; ++i) {
    const int64_t pos = cursor[static_cast<size_t>(owner(L.rows[static_cast<size_t>(i)]))]++;
    L.send_order[static_cast<size_t>(pos)] = i;
    request[static_cast<size_t>(pos)] = L.rows[static_cast<size_t>(i)];
  }
  L.recv_counts = exchange_counts(L.send_counts, comm);
  const int64_t served = sum(L.recv_counts);
  L.requested.resize(static_cast<size_t>(served));
  comm.all_to_all_v(request.data(), L.send_counts.data(), L.requested.data(), L.recv_counts.data(), DType::I64);

  // Owner side: the requested rows' values, in receive order.
  L.requested_shard_rows.resize(static_cast<size_t>(served));
  Tensor reply = Tensor::empty({served, dim_}, dtype_, Device::CPU);
  for (int64_t j = 0; j < served; ++j) {
    const int64_t row = L.requested[static_cast<size_t>(j)];
    const int64_t index = shard_index(row);
    NCSREC_CHECK(index >= 0, "table " << name() << " (" << placement_name(placement_) << "): rank " << rank_
                                      << " was asked for row " << row << ", which it does not hold");
    L.requested_shard_rows[static_cast<size_t>(j)] = index;
    copy_row(reply.raw(), j, shard_values, index, bytes);
  }
  Tensor received = Tensor::empty({unique, dim_}, dtype_, Device::CPU);
  const std::vector<int64_t> reply_counts = times(L.recv_counts, dim_), received_counts = times(L.send_counts, dim_);
  comm.all_to_all_v(reply.raw(), reply_counts.data(), received.raw(), received_counts.data(), dtype_);
  for (int64_t pos = 0; pos < unique; ++pos)
    copy_row(L.values.raw(), L.send_order[static_cast<size_t>(pos)], received.raw(), pos, bytes);
}

SparseGrad ShardedTable::reduce_gradient(const Lookup& lookup, const SparseGrad& grad, Communicator& comm) const {
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

  if (world_ == 1) {  // compact rows -> global rows, which are the shard's rows
    SparseGrad out;
    out.rows.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.rows[static_cast<size_t>(i)] = lookup.rows[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])];
    out.values = grad.values;
    return out;
  }
  if (placement_ == Placement::Replicated) {
    std::vector<int64_t> global_rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) global_rows[static_cast<size_t>(i)] = lookup.rows[static_cast<size_t>(grad.rows[static_cast<size_t>(i)])];
    return dtype_ == DType::F32 ? all_gather_gradient<float>(global_rows, grad.values, dim_, comm)
                                : all_gather_gradient<double>(global_rows, grad.values, dim_, comm);
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

  const std::vector<int64_t> recv_grad_counts = exchange_counts(grad_counts, comm);
  std::vector<int64_t> recv_id_counts(static_cast<size_t>(W), 0);
  for (int s = 0; s < W; ++s) {
    const int64_t got = recv_grad_counts[static_cast<size_t>(s)], served = lookup.recv_counts[static_cast<size_t>(s)];
    NCSREC_CHECK(got <= served, "table " << name() << ": rank " << s << " sends gradients of " << got
                                         << " rows but read only " << served << " rows from rank " << rank_);
    recv_id_counts[static_cast<size_t>(s)] = got == served ? 0 : got;
  }
  std::vector<int64_t> recv_ids(static_cast<size_t>(sum(recv_id_counts)));
  comm.all_to_all_v(ids.data(), id_counts.data(), recv_ids.data(), recv_id_counts.data(), DType::I64);
  const int64_t received = sum(recv_grad_counts);
  Tensor values = Tensor::empty({received, dim_}, dtype_, Device::CPU);
  const std::vector<int64_t> send_elems = times(grad_counts, dim_), recv_elems = times(recv_grad_counts, dim_);
  comm.all_to_all_v(send.raw(), send_elems.data(), values.raw(), recv_elems.data(), dtype_);

  // Owner side: the shard row of every received gradient row, in rank order.
  std::vector<Contribution> contributions(static_cast<size_t>(received));
  int64_t k = 0, id = 0, served_begin = 0;
  for (int s = 0; s < W; ++s) {
    const int64_t got = recv_grad_counts[static_cast<size_t>(s)];
    const bool all = recv_id_counts[static_cast<size_t>(s)] == 0;
    for (int64_t j = 0; j < got; ++j, ++k) {
      const int64_t at = all ? j : recv_ids[static_cast<size_t>(id++)];
      NCSREC_CHECK(at >= 0 && at < lookup.recv_counts[static_cast<size_t>(s)],
                   "table " << name() << ": rank " << s << " sent a gradient for request position " << at);
      contributions[static_cast<size_t>(k)] = {lookup.requested_shard_rows[static_cast<size_t>(served_begin + at)], k};
    }
    served_begin += lookup.recv_counts[static_cast<size_t>(s)];
  }
  return dtype_ == DType::F32 ? sum_by_row(contributions, values.data<float>(), dim_, dtype_)
                              : sum_by_row(contributions, values.data<double>(), dim_, dtype_);
}

}  // namespace ncsrec
