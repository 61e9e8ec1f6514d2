#include "runtime/gloo_collective.h"

#include <cstdint>
#include <exception>

#include "absl/strings/str_cat.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/broadcast.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"

namespace moemesh {
namespace {

absl::Status Unavailable(absl::string_view op, int rank, const std::exception& e) {
  return absl::UnavailableError(absl::StrCat("gloo ", op, " failed on rank ", rank, ": ", e.what()));
}

void SumFloats(void* c, const void* a, const void* b, size_t n) {
  float* out = static_cast<float*>(c);
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooCollective>> GlooCollective::Create(
    const GlooCollectiveConfig& config, gloo::rendezvous::Store& store, int rank, int size) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlooCollective rank ", rank, " is outside [0, ", size, ")"));
  }
  if (config.group.empty()) return absl::InvalidArgumentError("GlooCollective group name is empty");
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = config.hostname;
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::PrefixStore prefixed(config.group, store);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(config.timeout);
    context->connectFullMesh(prefixed, device);
    return std::unique_ptr<GlooCollective>(
        new GlooCollective(std::move(context), rank, size, config.timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gloo connect of group '", config.group, "' (host ",
                                               config.hostname, ") failed on rank ", rank, " of ",
                                               size, ": ", e.what()));
  }
}

GlooCollective::GlooCollective(std::shared_ptr<gloo::Context> context, int rank, int size,
                               std::chrono::milliseconds timeout)
    : context_(std::move(context)), rank_(rank), size_(size), timeout_(timeout) {}

GlooCollective::~GlooCollective() = default;

absl::Status GlooCollective::AllReduceSum(float* data, size_t count) {
  if (count == 0 || size_ == 1) return absl::OkStatus();
  try {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(data, count);
    opts.setReduceFunction(&SumFloats);
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
  } catch (const std::exception& e) {
    return Unavailable("allreduce", rank_, e);
  }
  return absl::OkStatus();
}

absl::Status GlooCollective::AllGather(const float* in, size_t count, float* out) {
  if (count == 0) return absl::OkStatus();
  try {
    gloo::AllgatherOptions opts(context_);
    opts.setInput(const_cast<float*>(in), count);
    opts.setOutput(out, count * size_);
    opts.setTimeout(timeout_);
    gloo::allgather(opts);
  } catch (const std::exception& e) {
    return Unavailable("allgather", rank_, e);
  }
  return absl::OkStatus();
}

absl::Status GlooCollective::Broadcast(void* data, size_t bytes, int root) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlooCollective::Broadcast: root ", root, " is outside [0, ", size_, ")"));
  }
  if (bytes == 0 || size_ == 1) return absl::OkStatus();
  try {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(static_cast<uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTimeout(timeout_);
    gloo::broadcast(opts);
  } catch (const std::exception& e) {
    return Unavailable("broadcast", rank_, e);
  }
  return absl::OkStatus();
}

}  // namespace moemesh
