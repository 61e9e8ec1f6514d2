// LocalExpertClient: the ExpertClient seam over an ExpertPool in the same process (single-host
// runs and tests). No copies, no wire format. Thread-safe: calls may overlap; the pool
// serialises them.
#pragma once

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/expert_client.h"
#include "worker/expert/expert_pool.h"

namespace moemesh {

class LocalExpertClient : public ExpertClient {
 public:
  explicit LocalExpertClient(ExpertPool* pool) : pool_(pool) {}  // not owned; must outlive this

  absl::Status Run(const ExpertBatch& batch, absl::Span<float> out) override;

 private:
  ExpertPool* pool_;
};

}  // namespace moemesh
