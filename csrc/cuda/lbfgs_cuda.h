// CUDA L-BFGS direction workspace: small device buffers (meta, per-partition
// sums, coefficients) allocated once; the history rings belong to the caller.
#pragma once
#include <cstdint>
#include <vector>

namespace optcore {
namespace cuda {

constexpr int kLbfgsMaxHistory = 1024;
// Elements per reduction partition (one pass-1 block each): fixed, so sums
// do not depend on the GPU or the launch.
constexpr int64_t kLbfgsGpuPartition = 8192;

class LbfgsCudaWorkspace {
 public:
  LbfgsCudaWorkspace(int64_t n, int m, int dtype, int device);
  ~LbfgsCudaWorkspace();
  LbfgsCudaWorkspace(const LbfgsCudaWorkspace&) = delete;
  LbfgsCudaWorkspace& operator=(const LbfgsCudaWorkspace&) = delete;

  // Three launches on `stream`, no host synchronisation.
  void direction(void* S, void* Y, int64_t ld, const void* s_new, const void* y_new, bool has_new,
                 const void* g, void* d, double eps, uintptr_t stream);
  void reset(uintptr_t stream);
  // Wait for `stream` (0: the legacy default stream), not the device:
  // inspection and state_dict only.
  std::vector<double> meta_host(uintptr_t stream = 0) const;
  void set_meta_host(const std::vector<double>& meta, uintptr_t stream = 0);

  int64_t n() const { return n_; }
  int m() const { return m_; }
  int dtype() const { return dtype_; }
  int device() const { return device_; }

 private:
  int64_t n_;
  int m_;
  int dtype_;
  int device_;
  int64_t parts_ = 0;
  double* buffer_ = nullptr;
  double* meta_ = nullptr;
  double* partials_ = nullptr;
  double* dots_ = nullptr;
  double* coef_ = nullptr;
  double* work_ = nullptr;
};

}  // namespace cuda
}  // namespace optcore
