// Subcommands of `ncsrec` that live in their own files (apps/cmd_*.cpp). Each takes the whole
// argv (argv[1] is the command's name), prints its --help, and throws ConfigError for usage
// and configuration mistakes (exit 2) and UserError for data errors (exit 1); main.cpp catches.
#pragma once

namespace ncsrec {

// ncsrec convert --schema FILE --out DIR [--policy fail|skip] [--rejects FILE] INPUT...
int cmd_convert(int argc, char** argv);

// ncsrec export (--run-dir DIR | --checkpoint DIR) --out FILE.h5 [--csr-below D]: the serving view
int cmd_export(int argc, char** argv);

// ncsrec history --snapshot DIR ... --tables T1,T2 --out DIR: E-CDCTR's historical embedding features
int cmd_history(int argc, char** argv);

// ncsrec bench [--config FILE] [--batch N] [--steps N] ...: training-step speed (samples/s)
int cmd_bench(int argc, char** argv);

}  // namespace ncsrec
