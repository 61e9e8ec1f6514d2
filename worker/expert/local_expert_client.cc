#include "worker/expert/local_expert_client.h"

namespace moemesh {

absl::Status LocalExpertClient::Run(const ExpertBatch& batch, absl::Span<float> out) {
  return pool_->Run(batch, out);
}

}  // namespace moemesh
