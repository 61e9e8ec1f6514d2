#include "worker/process/coordinator_store.h"

#include <stdexcept>

#include <grpcpp/grpcpp.h>

namespace moemesh {

// Gloo's Store interface reports failures by throwing; GlooCollective::Create catches them.
void CoordinatorStore::set(const std::string& key, const std::vector<char>& data) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
  v1::StoreSetRequest request;
  request.set_key(key);
  request.set_value(std::string(data.begin(), data.end()));
  v1::StoreSetResponse response;
  grpc::Status s = stub_->StoreSet(&ctx, request, &response);
  if (!s.ok()) throw std::runtime_error("rendezvous store set " + key + ": " + s.error_message());
}

std::vector<std::string> CoordinatorStore::Get(const std::vector<std::string>& keys,
                                               std::chrono::milliseconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::StoreGetRequest request;
  for (const std::string& k : keys) request.add_keys(k);
  v1::StoreGetResponse response;
  grpc::Status s = stub_->StoreGet(&ctx, request, &response);
  if (!s.ok()) throw std::runtime_error("rendezvous store get: " + s.error_message());
  return std::vector<std::string>(response.values().begin(), response.values().end());
}

std::vector<char> CoordinatorStore::get(const std::string& key) {
  std::string v = Get({key}, timeout_).at(0);
  return std::vector<char>(v.begin(), v.end());
}

void CoordinatorStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  Get(keys, timeout);
}

}  // namespace moemesh
