// Which expert-kernel paths this CPU and OS can run: cpuid feature bits, xgetbv for the register
// state the OS saves, and Linux's permission request for AMX tile data. Portable code: compiled
// without instruction-set flags. Results are computed once (thread-safe statics).
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

#include "kernels/cpu/expert_ffn.h"
#include "kernels/cpu/expert_ffn_paths.h"

namespace moemesh::cpu {
namespace {

struct Features {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512 = false;  // F, DQ, BW, VL, BF16, VNNI and the OS saving ZMM and opmask state
  bool amx = false;     // AMX-TILE, -BF16, -INT8 (OS permission is asked separately)
};

uint64_t Xcr0() {
  uint32_t eax = 0;
  uint32_t edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

bool Bit(uint32_t reg, int bit) { return (reg >> bit) & 1u; }

Features Detect() {
  Features f;
  uint32_t a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = Bit(c, 27);
  const bool avx = Bit(c, 28);
  f.fma = Bit(c, 12);
  f.f16c = Bit(c, 29);
  if (!osxsave || !avx) return Features{};
  const uint64_t xcr0 = Xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool os_zmm = (xcr0 & 0xe0) == 0xe0;   // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_tile = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
  if (!os_ymm || __get_cpuid_max(0, nullptr) < 7) return Features{};
  __cpuid_count(7, 0, a, b, c, d);
  const uint32_t ebx7 = b, ecx7 = c, edx7 = d;
  __cpuid_count(7, 1, a, b, c, d);
  const uint32_t eax7_1 = a;
  f.avx2 = Bit(ebx7, 5);
  f.avx512 = os_zmm && Bit(ebx7, 16) && Bit(ebx7, 17) && Bit(ebx7, 30) && Bit(ebx7, 31) &&
             Bit(ecx7, 11) && Bit(eax7_1, 5);
  f.amx = f.avx512 && os_tile && Bit(edx7, 22) && Bit(edx7, 24) && Bit(edx7, 25);
  if (!f.fma || !f.f16c) f.avx2 = false;
  return f;
}

const Features& Cpu() {
  static const Features features = Detect();
  return features;
}

}  // namespace

namespace internal {

bool RequestAmxPermission() {
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}

}  // namespace internal

const char* PathName(CpuPath path) {
  switch (path) {
    case CpuPath::kScalar:
      return "scalar";
    case CpuPath::kAvx2:
      return "avx2";
    case CpuPath::kAvx512:
      return "avx512";
    case CpuPath::kAmx:
      return "amx";
  }
  return "unknown";
}

bool PathSupported(CpuPath path) {
  switch (path) {
    case CpuPath::kScalar:
      return true;
    case CpuPath::kAvx2:
      return Cpu().avx2;
    case CpuPath::kAvx512:
      return Cpu().avx512;
    case CpuPath::kAmx:
      return Cpu().amx && internal::RequestAmxPermission();
  }
  return false;
}

std::vector<CpuPath> SupportedPaths() {
  std::vector<CpuPath> paths;
  for (CpuPath p : {CpuPath::kScalar, CpuPath::kAvx2, CpuPath::kAvx512, CpuPath::kAmx}) {
    if (PathSupported(p)) paths.push_back(p);
  }
  return paths;
}

}  // namespace moemesh::cpu
