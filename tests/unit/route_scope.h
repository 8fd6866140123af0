// The process-wide masked route (core/layers/masked_linear.h, run.masked_route) set for a scope
// and put back as it was when the scope ends, also when an assertion leaves the test early.
#pragma once

#include "core/layers/masked_linear.h"

namespace ncsrec::testing {

class RouteScope {
 public:
  explicit RouteScope(MaskedRoute route) : before_(masked_route()) { set_masked_route(route); }
  ~RouteScope() { set_masked_route(before_); }
  RouteScope(const RouteScope&) = delete;
  RouteScope& operator=(const RouteScope&) = delete;

 private:
  MaskedRoute before_;
};

}  // namespace ncsrec::testing
