#include "rpc/plan_codec.h"

namespace moemesh {

void EncodeSampling(const SamplingParams& p, v1::SamplingMsg* m) {
  m->set_temperature(p.temperature);
  m->set_top_k(p.top_k);
  m->set_top_p(p.top_p);
  m->set_min_p(p.min_p);
  m->set_repetition_penalty(p.repetition_penalty);
  m->set_presence_penalty(p.presence_penalty);
  m->set_frequency_penalty(p.frequency_penalty);
  m->set_seed(p.seed.value_or(0));
  m->set_logprobs(p.logprobs);
}

SamplingParams DecodeSampling(const v1::SamplingMsg& m) {
  SamplingParams p;
  p.temperature = m.temperature();
  p.top_k = m.top_k();
  p.top_p = m.top_p();
  p.min_p = m.min_p();
  p.repetition_penalty = m.repetition_penalty();
  p.presence_penalty = m.presence_penalty();
  p.frequency_penalty = m.frequency_penalty();
  p.seed = m.seed();
  p.logprobs = m.logprobs();
  return p;
}

void EncodePlan(const StepPlan& plan, v1::StepPlanMsg* msg) {
  msg->set_step(plan.step);
  for (const NewRequest& r : plan.new_requests) {
    v1::NewRequestMsg* m = msg->add_new_requests();
    m->set_id(r.id);
    m->mutable_prompt()->Add(r.prompt.begin(), r.prompt.end());
    m->mutable_output()->Add(r.output.begin(), r.output.end());
    EncodeSampling(r.sampling, m->mutable_sampling());
    m->mutable_prefix_blocks()->Add(r.prefix_blocks.begin(), r.prefix_blocks.end());
    m->set_prefix_tokens(r.prefix_tokens);
  }
  for (const ScheduledSequence& s : plan.sequences) {
    v1::ScheduledSequenceMsg* m = msg->add_sequences();
    m->set_id(s.id);
    m->mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
    m->set_start_position(s.start_position);
    m->mutable_new_blocks()->Add(s.new_blocks.begin(), s.new_blocks.end());
    m->set_sample(s.sample);
  }
  msg->mutable_finished()->Add(plan.finished.begin(), plan.finished.end());
  for (const BlockCopy& c : plan.block_copies) {
    v1::BlockCopyMsg* m = msg->add_block_copies();
    m->set_src(c.src);
    m->set_dst(c.dst);
  }
  for (const CascadeLevel& l : plan.cascade) {
    v1::CascadeLevelMsg* m = msg->add_cascade();
    m->mutable_members()->Add(l.members.begin(), l.members.end());
    m->set_block_begin(l.block_begin);
    m->set_block_end(l.block_end);
  }
}

StepPlan DecodePlan(const v1::StepPlanMsg& msg) {
  StepPlan plan;
  plan.step = msg.step();
  for (const v1::NewRequestMsg& m : msg.new_requests()) {
    NewRequest r;
    r.id = m.id();
    r.prompt.assign(m.prompt().begin(), m.prompt().end());
    r.output.assign(m.output().begin(), m.output().end());
    r.sampling = DecodeSampling(m.sampling());
    r.prefix_blocks.assign(m.prefix_blocks().begin(), m.prefix_blocks().end());
    r.prefix_tokens = m.prefix_tokens();
    plan.new_requests.push_back(std::move(r));
  }
  for (const v1::ScheduledSequenceMsg& m : msg.sequences()) {
    ScheduledSequence s;
    s.id = m.id();
    s.tokens.assign(m.tokens().begin(), m.tokens().end());
    s.start_position = m.start_position();
    s.new_blocks.assign(m.new_blocks().begin(), m.new_blocks().end());
    s.sample = m.sample();
    plan.sequences.push_back(std::move(s));
  }
  plan.finished.assign(msg.finished().begin(), msg.finished().end());
  for (const v1::BlockCopyMsg& m : msg.block_copies()) {
    plan.block_copies.push_back({m.src(), m.dst()});
  }
  for (const v1::CascadeLevelMsg& m : msg.cascade()) {
    CascadeLevel l;
    l.members.assign(m.members().begin(), m.members().end());
    l.block_begin = m.block_begin();
    l.block_end = m.block_end();
    plan.cascade.push_back(std::move(l));
  }
  return plan;
}

void EncodeResult(const StepResult& result, v1::StepResultMsg* msg) {
  msg->set_step(result.step);
  for (const SampledToken& t : result.tokens) {
    v1::SampledTokenMsg* m = msg->add_tokens();
    m->set_id(t.id);
    m->set_token(t.sample.token);
    m->set_logprob(t.sample.logprob);
    for (const TokenLogprob& lp : t.sample.top) {
      v1::TokenLogprobMsg* x = m->add_top();
      x->set_token(lp.token);
      x->set_logprob(lp.logprob);
    }
  }
}

StepResult DecodeResult(const v1::StepResultMsg& msg) {
  StepResult r;
  r.step = msg.step();
  for (const v1::SampledTokenMsg& m : msg.tokens()) {
    SampledToken t;
    t.id = m.id();
    t.sample.token = m.token();
    t.sample.logprob = m.logprob();
    for (const v1::TokenLogprobMsg& x : m.top()) t.sample.top.push_back({x.token(), x.logprob()});
    r.tokens.push_back(std::move(t));
  }
  return r;
}

}  // namespace moemesh
