#include "worker/expert/grpc_expert_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/expert/expert_wire.h"

namespace moemesh {

GrpcExpertClient::GrpcExpertClient(std::string address, GrpcExpertClientOptions options)
    : address_(std::move(address)), options_(options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxExpertMessageBytes);
  args.SetMaxSendMessageSize(kMaxExpertMessageBytes);
  channel_ = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::ExpertWorker::NewStub(channel_);
  if (options_.call_timeout.count() > 0) watchdog_ = std::thread([this] { WatchdogLoop(); });
}

GrpcExpertClient::~GrpcExpertClient() {
  {
    std::lock_guard<std::mutex> lock(call_mu_);
    if (stream_ != nullptr) CloseStream(/*cancel=*/true);
  }
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      stop_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();
  }
}

absl::Status GrpcExpertClient::Unavailable(const std::string& what) const {
  return absl::UnavailableError(absl::StrCat("expert worker ", address_, ": ", what));
}

grpc::Status GrpcExpertClient::CloseStream(bool cancel) {
  if (cancel) context_->TryCancel();
  grpc::Status status = stream_->Finish();
  stream_.reset();
  context_.reset();
  return status;
}

void GrpcExpertClient::Arm(grpc::ClientContext* context) {
  if (!watchdog_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    armed_ = context;
    fired_ = false;
    deadline_ = std::chrono::steady_clock::now() + options_.call_timeout;
  }
  watch_cv_.notify_all();
}

bool GrpcExpertClient::Disarm() {
  if (!watchdog_.joinable()) return false;
  std::lock_guard<std::mutex> lock(watch_mu_);
  armed_ = nullptr;
  return fired_;
}

void GrpcExpertClient::WatchdogLoop() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!stop_) {
    if (armed_ == nullptr) {
      watch_cv_.wait(lock);
    } else if (watch_cv_.wait_until(lock, deadline_) == std::cv_status::timeout &&
               armed_ != nullptr && std::chrono::steady_clock::now() >= deadline_) {
      armed_->TryCancel();  // under watch_mu_: Disarm cannot return while this runs
      armed_ = nullptr;
      fired_ = true;
    }
  }
}

absl::Status GrpcExpertClient::Run(const ExpertBatch& batch, absl::Span<float> out) {
  const int64_t expected = static_cast<int64_t>(batch.num_tokens) * batch.hidden;
  if (batch.num_tokens < 0 || static_cast<int64_t>(out.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("expert client out has ", out.size(),
                                                   " values, expected ", expected,
                                                   " (num_tokens * hidden)"));
  }
  std::lock_guard<std::mutex> lock(call_mu_);
  const bool opening = stream_ == nullptr;
  // A stream started on a channel that is not connected yet fails at once if the first connect
  // attempt fails; wait (bounded) for the connection so a busy machine is not taken for a dead peer.
  if (opening && !channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return Unavailable("cannot connect within 10 s");
  }
  if (opening) context_ = std::make_unique<grpc::ClientContext>();
  Arm(context_.get());
  if (opening) stream_ = stub_->Dispatch(context_.get());
  EncodeExpertRequest(batch, ++sequence_, &request_);
  const bool ok = stream_->Write(request_) && stream_->Read(&response_);
  const bool timed_out = Disarm();
  if (!ok) {
    const grpc::Status st = CloseStream(/*cancel=*/timed_out);
    if (timed_out) {
      return Unavailable(absl::StrCat("no response within ", options_.call_timeout.count(),
                                      " ms (stream cancelled)"));
    }
    return Unavailable(absl::StrCat("stream failed: gRPC code ", static_cast<int>(st.error_code()),
                                    ": ", st.error_message()));
  }
  if (response_.sequence() != sequence_) {
    CloseStream(/*cancel=*/true);
    return Unavailable(absl::StrCat("response sequence ", response_.sequence(), ", expected ",
                                    sequence_, " (stream reset)"));
  }
  absl::Status worker = ExpertResponseStatus(response_);
  absl::Status payload = worker.ok() ? DecodeExpertPartialSums(response_, out) : absl::OkStatus();
  if (timed_out) CloseStream(/*cancel=*/true);  // cancelled just after the answer came
  if (!worker.ok()) {
    return absl::Status(worker.code(), absl::StrCat("expert worker ", address_, ": ", worker.message()));
  }
  if (!payload.ok()) {
    if (stream_ != nullptr) CloseStream(/*cancel=*/true);
    return Unavailable(absl::StrCat(payload.message(), " (stream reset)"));
  }
  return absl::OkStatus();
}

}  // namespace moemesh
