// The fused linear forward (the `gemm_bias_act` entry of the CUDA table) through cuBLASLt:
// C = act(op(A)·op(B) + bias) in one call, the bias and ReLU in the GEMM's epilogue
// (CUBLASLT_EPILOGUE_BIAS / RELU_BIAS), in FP32 or with TF32 tensor cores.
//
// Layout: our arrays are row-major, cuBLASLt's column-major. A row-major C [M, N] is a
// column-major Cᵀ [N, M], and Cᵀ = op(B)ᵀ·op(A)ᵀ, so B is cuBLASLt's first operand and A its
// second, with no data moved; the bias, one value per column of C, is then one per row of Cᵀ,
// which is what the epilogue adds. f64 has no epilogue here: GEMM, bias and ReLU run as three ops.
// cuBLASLt returns cuBLAS's status codes: CUBLAS_CHECK reports them.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <climits>
#include <mutex>

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

// RAII for the descriptors of one call.
struct LtCall {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (c) (void)cublasLtMatrixLayoutDestroy(c);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (desc) (void)cublasLtMatmulDescDestroy(desc);
  }
};

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
  NCSREC_CHECK(precision == kMatmulFp32 || precision == kMatmulTf32, "gemm_bias_act: precision " << precision);
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  if (!g_lt) {
    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    CUDA_CHECK(cudaMalloc(&g_workspace, kWorkspaceBytes));
  }
  const int m = checked_int(N, "N"), n = checked_int(M, "M"), k = checked_int(K, "K");
  LtCall call;
  const cublasComputeType_t compute = precision == kMatmulTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&call.desc, compute, CUDA_R_32F));
  // cuBLASLt's first operand is our B (op: our trans_b), its second our A (our trans_a).
  const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  const cublasLtEpilogue_t epilogue = bias ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                           : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  // Stored shapes (column-major): our B is [N, K] (ld N), or transposed [K, N] (ld K); our A
  // [K, M] (ld K), or [M, K] (ld M); Cᵀ [N, M] (ld N).
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.a, CUDA_R_32F, tb ? k : m, tb ? m : k, tb ? k : m));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.b, CUDA_R_32F, ta ? n : k, ta ? k : n, ta ? n : k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.c, CUDA_R_32F, m, n, m));
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&call.pref));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &kWorkspaceBytes, sizeof(kWorkspaceBytes)));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(g_lt, call.desc, call.a, call.b, call.c, call.c, call.pref, 1,
                                                &heuristic, &found));
  NCSREC_CHECK(found > 0, "cuBLASLt has no algorithm for a " << M << "x" << K << " by " << K << "x" << N
                                                             << " product with this epilogue");
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(g_lt, call.desc, &alpha, B, call.a, A, call.b, &beta, C, call.c, C, call.c,
                                &heuristic.algo, g_workspace, kWorkspaceBytes, nullptr));
}

}  // namespace

void add_cuda_gemm_ops(OpTable& t) { t.gemm_bias_act = cuda_gemm_bias_act; }

}  // namespace ncsrec
