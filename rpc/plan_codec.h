// Wire conversion of step plans and results (runtime/step_plan.h <-> cluster.proto), and of
// sampling parameters. Pure functions; thread-safe.
#pragma once

#include "moemesh/v1/cluster.pb.h"
#include "runtime/step_plan.h"

namespace moemesh {

void EncodePlan(const StepPlan& plan, v1::StepPlanMsg* msg);
StepPlan DecodePlan(const v1::StepPlanMsg& msg);
void EncodeResult(const StepResult& result, v1::StepResultMsg* msg);
StepResult DecodeResult(const v1::StepResultMsg& msg);
void EncodeSampling(const SamplingParams& params, v1::SamplingMsg* msg);
SamplingParams DecodeSampling(const v1::SamplingMsg& msg);

}  // namespace moemesh
