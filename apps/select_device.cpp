// The device choice of the commands that train (train, bench): the CUDA backend registered when
// a GPU is wanted and present, and the products' precision set for the process.
#include <string>

#include "apps/commands.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/layers/masked_linear.h"

#ifdef NCSREC_HAVE_CUDA
#include "cuda/device.h"
#endif

namespace ncsrec {

std::string select_device(const std::string& device, const std::string& matmul, const std::string& masked_route,
                          const std::string& what, const std::string& remedy) {
  set_matmul_precision(parse_matmul_precision(matmul));
  set_masked_route(parse_masked_route(masked_route));
  std::string why_not = "this ncsrec was built without CUDA";
  bool gpu = false;
  std::string description = "cpu";
#ifdef NCSREC_HAVE_CUDA
  if (device != "cpu") gpu = cuda_register_if_available(&why_not);
  if (gpu) description = cuda_device_description(cuda_select_device_index(cuda_device_count()));
#endif
  if (device == "cuda" && !gpu) throw UserError(what + " but no GPU can be used: " + why_not + remedy);
  return description;
}

}  // namespace ncsrec
