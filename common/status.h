// Status helpers shared by every module: return-on-error macros and a check macro for broken
// invariants. External input never reaches MM_CHECK; it gets an absl::Status naming the field,
// the value and the limit. Thread-safe (stateless).
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define MM_CONCAT_INNER_(a, b) a##b
#define MM_CONCAT_(a, b) MM_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define MM_RETURN_IF_ERROR(expr)                      \
  do {                                                \
    ::absl::Status mm_status_ = (expr);               \
    if (!mm_status_.ok()) return mm_status_;          \
  } while (0)

// `MM_ASSIGN_OR_RETURN(auto x, F())` binds the value of an OK StatusOr or returns its status.
#define MM_ASSIGN_OR_RETURN(lhs, expr) \
  MM_ASSIGN_OR_RETURN_IMPL_(MM_CONCAT_(mm_statusor_, __LINE__), lhs, expr)
#define MM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Aborts with file and line when an internal invariant is broken. Never for external input.
#define MM_CHECK(cond)                                                              \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)
