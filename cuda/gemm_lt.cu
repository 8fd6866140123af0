// The fused linear forward (the `gemm_bias_act` entry of the CUDA table) through cuBLASLt:
// C = act(op(A)·op(B) + bias) in one call, the bias and ReLU in the GEMM's epilogue
// (CUBLASLT_EPILOGUE_BIAS / RELU_BIAS), in FP32 or with TF32 or BF16 tensor cores.
//
// Layout: our arrays are row-major, cuBLASLt's column-major. A row-major C [M, N] is a
// column-major Cᵀ [N, M], and Cᵀ = op(B)ᵀ·op(A)ᵀ, so B is cuBLASLt's first operand and A its
// second, with no data moved; the bias, one value per column of C, is then one per row of Cᵀ,
// which is what the epilogue adds. f64 has no epilogue here: GEMM, bias and ReLU run as three ops.
// cuBLASLt returns cuBLAS's status codes: CUBLAS_CHECK reports them.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <climits>
#include <map>
#include <mutex>
#include <tuple>

#include "core/dispatch.h"
#include "core/error.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/train_ops.h"


namespace ncsrec {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

std::mutex g_lt_mutex;  // guards the handle and workspace below
cublasLtHandle_t g_lt = nullptr;
void* g_workspace = nullptr;

int checked_int(int64_t v, const char* what) {
  NCSREC_CHECK(v >= 0 && v <= INT_MAX, "gemm_bias_act: " << what << " = " << v << " exceeds cuBLASLt's int");
  return static_cast<int>(v);
}

// The descriptors and the algorithm of one product shape, made once (the heuristic query costs
// more than a small GEMM) and kept until the process exits, like the handle.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct PlanKey {
  bool ta, tb, bias, relu;
  int64_t M, N, K;
  int precision;
  bool operator<(const PlanKey& o) const {
    return std::tie(ta, tb, bias, relu, M, N, K, precision) <
           std::tie(o.ta, o.tb, o.bias, o.relu, o.M, o.N, o.K, o.precision);
  }
};

std::map<PlanKey, LtPlan> g_plans;  // guarded by g_lt_mutex

const LtPlan& plan_for(const PlanKey& key) {
  auto it = g_plans.find(key);
  if (it != g_plans.end()) return it->second;
  const int m = checked_int(key.N, "N"), n = checked_int(key.M, "M"), k = checked_int(key.K, "K");
  LtPlan p;
  const cublasComputeType_t compute = key.precision == kMatmulTf32   ? CUBLAS_COMPUTE_32F_FAST_TF32
                                     : key.precision == kMatmulBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                    : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
  // cuBLASLt's first operand is our B (op: our trans_b), its second our A (our trans_a).
  const cublasOperation_t op_first = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  const cublasLtEpilogue_t epilogue = key.bias ? (key.relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                               : (key.relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  // Stored shapes (column-major): our B is [N, K] (ld N), or transposed [K, N] (ld K); our A
  // [K, M] (ld K), or [M, K] (ld M); Cᵀ [N, M] (ld N).
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, key.tb ? k : m, key.tb ? m : k, key.tb ? k : m));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, key.ta ? n : k, key.ta ? k : n, key.ta ? n : k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, m, n, m));
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                  &kWorkspaceBytes, sizeof(kWorkspaceBytes));
  const cublasStatus_t st2 = st == CUBLAS_STATUS_SUCCESS
                                 ? cublasLtMatmulAlgoGetHeuristic(g_lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &heuristic, &found)
                                 : st;
  (void)cublasLtMatmulPreferenceDestroy(pref);
  CUBLAS_CHECK(st2);
  NCSREC_CHECK(found > 0, "cuBLASLt has no algorithm for a " << key.M << "x" << key.K << " by " << key.K << "x"
                                                             << key.N << " product with this epilogue");
  p.algo = heuristic.algo;
  return g_plans.emplace(key, p).first->second;
}

void cuda_gemm_bias_act(DType d, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, const void* B,
                        const void* bias, bool relu, int precision, void* C) {
  if (M == 0 || N == 0) return;
  const OpTable& ops = ops_for(Device::CUDA);
  if (d != DType::F32 || K == 0) {  // no epilogue path: the three ops
    ops.gemm(d, ta, tb, M, N, K, 1.0, A, B, 0.0, C);
    if (bias) ops.bias_add(d, C, bias, M, N);
    if (relu) ops.relu_forward(d, C, C, M * N);
    return;
  }
  NCSREC_CHECK(precision == kMatmulFp32 || precision == kMatmulTf32 || precision == kMatmulBf16,
               "gemm_bias_act: precision " << precision);
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  if (!g_lt) {
    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    CUDA_CHECK(cudaMalloc(&g_workspace, kWorkspaceBytes));
  }
  const LtPlan& p = plan_for({ta, tb, bias != nullptr, relu, M, N, K, precision});
  if (bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(g_lt, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, g_workspace,
                                kWorkspaceBytes, nullptr));
}

}  // namespace

void add_cuda_gemm_ops(OpTable& t) { t.gemm_bias_act = cuda_gemm_bias_act; }

}  // namespace ncsrec
