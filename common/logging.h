// Minimal leveled logging to stderr: MM_LOG(INFO) << "text";. The level threshold comes from
// the MOEMESH_LOG_LEVEL environment variable (debug, info, warning, error; default info).
// Thread-safe: each message is written with one call.
#pragma once

#include <sstream>

namespace moemesh {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

bool LogEnabled(LogLevel level);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace moemesh

#define MM_LOG_LEVEL_DEBUG ::moemesh::LogLevel::kDebug
#define MM_LOG_LEVEL_INFO ::moemesh::LogLevel::kInfo
#define MM_LOG_LEVEL_WARNING ::moemesh::LogLevel::kWarning
#define MM_LOG_LEVEL_ERROR ::moemesh::LogLevel::kError
#define MM_LOG(level)                                   \
  if (!::moemesh::LogEnabled(MM_LOG_LEVEL_##level)) {   \
  } else                                                \
    ::moemesh::LogMessage(MM_LOG_LEVEL_##level, __FILE__, __LINE__).stream()
