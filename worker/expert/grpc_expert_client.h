// GrpcExpertClient: the ExpertClient seam over one ExpertWorker.Dispatch stream to one expert
// worker (opened on first use, reopened on the call after a failure; one request, then its
// response, in lockstep). Wire conversion lives in expert_wire.h. Thread-safe: overlapping Run
// calls are serialised (use one client per concurrent caller to overlap them).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "moemesh/v1/expert.grpc.pb.h"
#include "runtime/expert_client.h"

namespace moemesh {

struct GrpcExpertClientOptions {
  // Per-call limit on the time from sending a request to its response (opening the stream
  // included); zero: none. A call past it cancels the stream and returns UNAVAILABLE.
  std::chrono::milliseconds call_timeout{0};
};

class GrpcExpertClient : public ExpertClient {
 public:
  // `address` is "host:port" (anything grpc::CreateChannel takes). Does not connect yet.
  explicit GrpcExpertClient(std::string address, GrpcExpertClientOptions options = {});
  ~GrpcExpertClient() override;

  // Transport failures (connection refused or lost, a timeout, a malformed or out-of-order
  // response) return UNAVAILABLE naming the address, and the next call opens a new stream.
  // Errors the worker reports keep the worker's code (e.g. FAILED_PRECONDITION for an expert it
  // does not hold), prefixed with the address; the stream stays open.
  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) override;

  const std::string& address() const { return address_; }

 private:
  using Stream = grpc::ClientReaderWriter<v1::ExpertRequest, v1::ExpertResponse>;

  absl::Status Unavailable(const std::string& what) const;
  // Ends the stream; `cancel` first when the call may still be alive. Returns its final status.
  grpc::Status CloseStream(bool cancel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(call_mu_);
  void Arm(grpc::ClientContext* context);
  bool Disarm();  // true when the timeout fired
  void WatchdogLoop();

  const std::string address_;
  const GrpcExpertClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ExpertWorker::Stub> stub_;

  std::mutex call_mu_;  // one call at a time on the stream
  std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(call_mu_);
  std::unique_ptr<Stream> stream_ ABSL_GUARDED_BY(call_mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(call_mu_) = 0;
  v1::ExpertRequest request_ ABSL_GUARDED_BY(call_mu_);
  v1::ExpertResponse response_ ABSL_GUARDED_BY(call_mu_);

  // Timeout watchdog (started only with a call_timeout): cancels the armed context at deadline.
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  grpc::ClientContext* armed_ ABSL_GUARDED_BY(watch_mu_) = nullptr;
  std::chrono::steady_clock::time_point deadline_ ABSL_GUARDED_BY(watch_mu_);
  bool fired_ ABSL_GUARDED_BY(watch_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(watch_mu_) = false;
  std::thread watchdog_;
};

}  // namespace moemesh
