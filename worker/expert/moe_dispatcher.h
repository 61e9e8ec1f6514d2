// MoeDispatcher: an ExpertClient for FULL routes (every expert id of the model) that splits a
// batch over the expert workers holding the experts, calls them concurrently and sums their
// partial outputs. Placement (who holds what) is given, not decided, here. Thread-safe when its
// clients are: Run keeps no state between calls.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/expert_client.h"

namespace moemesh {

class MoeDispatcher : public ExpertClient {
 public:
  // owners[layer][expert] lists the indices into `clients` of the workers holding that expert
  // (several: replicas); layers without MoE may have no entries. Clients are not owned and must
  // outlive the dispatcher. INVALID_ARGUMENT for a client index out of range or a null client.
  static absl::StatusOr<std::unique_ptr<MoeDispatcher>> Create(
      std::vector<std::vector<std::vector<int>>> owners, std::vector<ExpertClient*> clients);

  // Each client gets the tokens with at least one route it serves (other routes as -1). A
  // replicated expert goes to replica (token index) % (replicas). Partial outputs are summed in
  // client-index order, so the result is deterministic. FAILED_PRECONDITION naming layer and
  // expert when an expert has no owner; a client's error is returned prefixed with its index
  // (the first failing client in index order), after every call has returned.
  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) override;

  int num_clients() const { return static_cast<int>(clients_.size()); }

 private:
  MoeDispatcher(std::vector<std::vector<std::vector<int>>> owners,
                std::vector<ExpertClient*> clients)
      : owners_(std::move(owners)), clients_(std::move(clients)) {}

  std::vector<std::vector<std::vector<int>>> owners_;
  std::vector<ExpertClient*> clients_;
};

}  // namespace moemesh
