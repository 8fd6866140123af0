// Errors. User errors (bad config, bad data, bad paths) are `UserError`s with a message a user
// can act on; they are caught once in apps/ and printed without a stack trace (exit code 2 for
// config errors, 1 otherwise). Broken invariants are `NCSREC_CHECK` failures (`InternalError`).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace ncsrec {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A configuration error: exit code 2.
struct ConfigError : UserError {
  using UserError::UserError;
};
struct InternalError : std::logic_error {
  using std::logic_error::logic_error;
};

}  // namespace ncsrec

#define NCSREC_STR_(msg) ([&]() { std::ostringstream ncsrec_os_; ncsrec_os_ << msg; return ncsrec_os_.str(); }())

#define NCSREC_CHECK(cond, msg)                                                                \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::ncsrec::InternalError(NCSREC_STR_(__FILE__ << ":" << __LINE__ << ": check `"    \
                                                         << #cond << "` failed: " << msg));    \
  } while (0)

#define NCSREC_USER_CHECK(cond, msg)                           \
  do {                                                         \
    if (!(cond)) throw ::ncsrec::UserError(NCSREC_STR_(msg));  \
  } while (0)
