// Status and Result<T>: how every kbit library function reports failure.
//
// A Status is either ok or carries an error code and a message. Messages are written for the
// person running kbit: they name the object at fault (a file, a tensor, a flag), what is wrong
// with it, and what to do instead. The library never prints and never exits; front ends turn a
// failed Status into a message and an exit code.
//
// Result<T> holds either a T or a failed Status. Thread safety: values, no shared state.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace kbit {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller passed something the contract does not allow
  kNotFound,         // a named file, tensor or key does not exist
  kDataLoss,         // a file is truncated or corrupt
  kUnimplemented,    // valid request that this build or this device cannot do
  kOutOfMemory,      // an allocation failed
  kInternal,         // a bug in kbit or a failure of a lower layer (CUDA, the OS)
};

// Returns a stable lower-case name for `code`, e.g. "invalid argument".
const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "invalid argument: <message>", or "ok".
  std::string to_string() const;

  // Returns a copy whose message is "<context>: <message>"; ok stays ok.
  Status with_context(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() {
  return Status();
}
Status invalid_argument(std::string message);
Status not_found(std::string message);
Status data_loss(std::string message);
Status unimplemented(std::string message);
Status out_of_memory(std::string message);
Status internal_error(std::string message);

// Either a value or a failed Status. Constructing from an ok Status is a programming error and
// is turned into an internal error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(state_).ok()) {
      state_ = internal_error("Result constructed from an ok Status without a value");
    }
  }

  bool ok() const { return std::holds_alternative<T>(state_); }
  // The failure; an ok Status when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(state_); }

  // Requires ok().
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace kbit

#define KBIT_CONCAT_INNER(a, b) a##b
#define KBIT_CONCAT(a, b) KBIT_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function if it failed.
#define KBIT_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::kbit::Status kbit_status_ = (expr);        \
    if (!kbit_status_.ok()) return kbit_status_; \
  } while (false)

// `KBIT_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result, or returns its failure.
#define KBIT_ASSIGN_OR_RETURN(decl, expr) \
  KBIT_ASSIGN_OR_RETURN_IMPL(KBIT_CONCAT(kbit_result_, __LINE__), decl, expr)
#define KBIT_ASSIGN_OR_RETURN_IMPL(result, decl, expr) \
  auto result = (expr);                                \
  if (!result.ok()) return result.status();            \
  decl = std::move(result).value()
