// Runs the built `ncsrec` command (NCSREC_BINARY) for command-level tests: stdout and stderr
// together, and the exit code.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace ncsrec::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
  std::vector<std::string> nonempty_lines() const {
    std::vector<std::string> lines;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
    return lines;
  }
};

inline std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `ncsrec <args>` (in `cwd` when given) with stderr merged into stdout.
inline CommandResult run_ncsrec(const std::string& args, const std::string& cwd = "") {
  const std::string command = (cwd.empty() ? std::string() : "cd " + shell_quoted(cwd) + " && ") +
                              shell_quoted(NCSREC_BINARY) + " " + args + " 2>&1";
  CommandResult r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) {
    ADD_FAILURE() << "popen failed for " << command;
    return r;
  }
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) r.output.append(buf, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

}  // namespace ncsrec::testing
