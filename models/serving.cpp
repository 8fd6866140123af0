#include "models/serving.h"

#include "core/error.h"
#include "core/ops.h"

namespace ncsrec {

ModelConfig serving_config(const ModelConfig& trained) {
  ModelConfig c = trained;
  c.apg.options.overparam = 0;
  return c;
}

void copy_for_serving(MultiTaskModel& trained, MultiTaskModel& serving) {
  NCSREC_CHECK(trained.dtype() == serving.dtype(), "the serving model must have the trained model's dtype");
  ParamStore& from = trained.params();
  for (Param& p : serving.params().params()) {
    if (const Param* src = from.find(p.name)) {
      NCSREC_CHECK(src->shape == p.shape, "parameter " << p.name << ": trained " << shape_string(src->shape)
                                                       << ", serving " << shape_string(p.shape));
      p.value.copy_from(src->value);
      continue;
    }
    // An APG kernel the trained model holds as two factors: U = U_l·U_r, V = V_l·V_r.
    const size_t dot = p.name.rfind('.');
    const std::string base = p.name.substr(0, dot), leaf = p.name.substr(dot + 1);
    const Param* left = (leaf == "U" || leaf == "V") ? from.find(base + "." + leaf + "_l") : nullptr;
    const Param* right = (leaf == "U" || leaf == "V") ? from.find(base + "." + leaf + "_r") : nullptr;
    if (!left || !right)
      throw UserError("serving parameter " + p.name + " has no source in the trained model (the two configs differ)");
    ops::gemm(p.value, left->value, false, right->value, false);
  }
  NCSREC_CHECK(trained.tables().size() == serving.tables().size(), "the serving model has other tables");
  for (size_t t = 0; t < trained.tables().size(); ++t) {
    ShardedTable& to = serving.tables()[t];
    const ShardedTable& source = trained.tables()[t];
    to.insert_owned({source.shard_rows().begin(), source.shard_rows().end()});  // a hash table: the same ids, in order
    NCSREC_CHECK(to.shard_rows() == source.shard_rows(), "the serving table " << to.name() << " holds other rows");
    to.shard().values().copy_from(source.shard().values());
  }
  NCSREC_CHECK(trained.num_masked_layers() == serving.num_masked_layers(), "the serving model has other masks");
  for (size_t t = 0; t < trained.config().tasks.size(); ++t)
    for (int l = 0; l < trained.num_masked_layers(); ++l)
      serving.set_mask(static_cast<int>(t), l, trained.mask(static_cast<int>(t), l));
}

}  // namespace ncsrec
