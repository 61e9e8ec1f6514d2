// Test harness: runs `moemesh serve` (or another moemesh command) as a child process on
// loopback with an OS-chosen port, waits until it is ready, gives a Generation stub, and stops
// it (SIGTERM, then SIGKILL) on destruction. For tests and benchmarks; not thread-safe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "moemesh/v1/generate.grpc.pb.h"

namespace moemesh::testing {

class LocalCluster {
 public:
  // Starts `moemesh serve --model DIR --tp TP --expert_workers E` plus `extra` flags.
  static std::unique_ptr<LocalCluster> Serve(const std::string& model_dir, int tp, int experts,
                                             const std::vector<std::string>& extra = {});
  // Starts any moemesh command; `ready_file` is the --port_file it writes when ready.
  static std::unique_ptr<LocalCluster> Start(const std::vector<std::string>& args);
  ~LocalCluster();

  // Waits until the port file appears; false (with the log in `error`) if the process exits or
  // the timeout passes.
  bool WaitReady(std::chrono::seconds timeout, std::string* error);
  // Waits for the process to exit; returns its exit status (-1 on timeout).
  int WaitExit(std::chrono::seconds timeout);

  const std::string& address() const { return address_; }
  v1::Generation::Stub& stub() { return *stub_; }
  std::string Log() const;
  std::string port_file() const { return dir_ + "/port"; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::string start_error_;  // why fork failed, if it did
  std::string address_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

// The moemesh executable under test.
std::string MoemeshBinary();

}  // namespace moemesh::testing
