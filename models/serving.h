// The serving form of a trained model: the same config with APG's over-parameterised factors
// multiplied out (apg.overparam 0), every other parameter, state, table and mask copied.
//
// APG trains U = U_l·U_r and V = V_l·V_r as factors (PAPERS.md §4); serving needs only U and V,
// so the factors cost nothing at inference. The serving model gives the trained model's
// predictions up to rounding (f32: 1e-5, tested).
#pragma once

#include "models/multitask_model.h"

namespace ncsrec {

// The config of the serving form of `trained` (apg.overparam set to 0).
ModelConfig serving_config(const ModelConfig& trained);

// Copies `trained` into `serving`, a model built from serving_config(trained.config()) on the
// same schema and dtype: parameters by name, `<layer>.U` / `.V` as the products of the trained
// factors, embedding tables, masks. Throws UserError when a serving parameter has no source.
void copy_for_serving(MultiTaskModel& trained, MultiTaskModel& serving);

}  // namespace ncsrec
