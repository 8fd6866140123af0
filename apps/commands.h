// Subcommands of `ncsrec` that live in their own files (apps/cmd_*.cpp). Each takes the whole
// argv (argv[1] is the command's name), prints its --help, and throws ConfigError for usage
// and configuration mistakes (exit 2) and UserError for data errors (exit 1); main.cpp catches.
#pragma once

#include <string>

namespace ncsrec {

// For the commands that train: sets the products' precision (matmul: fp32 | tf32 | bf16) and the
// masked layers' route (masked_route: auto | plain | fused; core/layers/masked_linear.h) and, unless
// `device` is cpu, registers the CUDA backend when a GPU exists (the trainer then picks the
// device: train/step.h training_device). device cuda without a GPU is the UserError
// "<what> but no GPU can be used: <reason><remedy>". Returns the GPU's description when one
// was registered, else "cpu".
std::string select_device(const std::string& device, const std::string& matmul, const std::string& masked_route,
                          const std::string& what, const std::string& remedy);

// ncsrec convert --schema FILE --out DIR [--policy fail|skip] [--rejects FILE] INPUT...
int cmd_convert(int argc, char** argv);

// ncsrec export (--run-dir DIR | --checkpoint DIR) --out FILE.h5 [--csr-below D]: the serving view
int cmd_export(int argc, char** argv);

// ncsrec history --snapshot DIR ... --tables T1,T2 --out DIR: E-CDCTR's historical embedding features
int cmd_history(int argc, char** argv);

// ncsrec bench [--config FILE] [--batch N] [--steps N] ...: training-step speed (samples/s)
int cmd_bench(int argc, char** argv);

}  // namespace ncsrec
