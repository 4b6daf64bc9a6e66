// ferrolab's GPU kernels, compiled by NVRTC at first use for the device's architecture (see nvrtc.rs).
//
// Conventions: contiguous inputs of n elements (u64); blocks of FL_BLOCK threads; reductions run a grid-stride
// loop per thread, combine within the block (warp shuffles, then one shared array), write one partial per block,
// and a second one-block kernel combines the partials in a fixed order: results are deterministic (no float
// atomics). float32 inputs accumulate in double like the CPU path. NaN rules are NumPy's: min/max propagate NaN,
// argmin/argmax return the first NaN's index.

#define FL_BLOCK 256
#define FL_WARPS (FL_BLOCK / 32)

typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// The sum of one value per thread of the block, valid in thread 0. Starts and ends with a barrier so that it can
// be called more than once in a kernel.
__device__ double block_sum(double v) {
    __shared__ double part[FL_WARPS];
    __syncthreads();
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < FL_WARPS; ++w) t += part[w];
    __syncthreads();
    return t;
}

template <typename T>
__device__ __forceinline__ double sum_range(const T* __restrict__ x, u64 n) {
    // four independent accumulators per thread
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    const u64 stride = (u64)gridDim.x * FL_BLOCK;
    u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        a0 += (double)x[i];
        a1 += (double)x[i + stride];
        a2 += (double)x[i + 2 * stride];
        a3 += (double)x[i + 3 * stride];
    }
    for (; i < n; i += stride) a0 += (double)x[i];
    return (a0 + a1) + (a2 + a3);
}

// partial[blockIdx.x] = sum of the block's share of x (op 0), of x*x (op 1)
template <typename T, int OP>
__device__ void sum_kernel(const T* __restrict__ x, u64 n, double* __restrict__ partial) {
    double acc;
    if (OP == 0) {
        acc = sum_range(x, n);
    } else {
        double a0 = 0.0, a1 = 0.0;
        const u64 stride = (u64)gridDim.x * FL_BLOCK;
        u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x;
        for (; i + stride < n; i += 2 * stride) {
            double u = (double)x[i], w = (double)x[i + stride];
            a0 += u * u;
            a1 += w * w;
        }
        for (; i < n; i += stride) { double u = (double)x[i]; a0 += u * u; }
        acc = a0 + a1;
    }
    double t = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

extern "C" __global__ void fl_sum_f32(const float* x, u64 n, double* partial) { sum_kernel<float, 0>(x, n, partial); }
extern "C" __global__ void fl_sum_f64(const double* x, u64 n, double* partial) { sum_kernel<double, 0>(x, n, partial); }
extern "C" __global__ void fl_sumsq_f32(const float* x, u64 n, double* partial) { sum_kernel<float, 1>(x, n, partial); }
extern "C" __global__ void fl_sumsq_f64(const double* x, u64 n, double* partial) { sum_kernel<double, 1>(x, n, partial); }

template <typename T>
__device__ void dot_kernel(const T* __restrict__ x, const T* __restrict__ y, u64 n, double* __restrict__ partial) {
    double a0 = 0.0, a1 = 0.0;
    const u64 stride = (u64)gridDim.x * FL_BLOCK;
    u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x;
    for (; i + stride < n; i += 2 * stride) {
        a0 += (double)x[i] * (double)y[i];
        a1 += (double)x[i + stride] * (double)y[i + stride];
    }
    for (; i < n; i += stride) a0 += (double)x[i] * (double)y[i];
    double t = block_sum(a0 + a1);
    if (threadIdx.x == 0) partial[blockIdx.x] = t;
}
extern "C" __global__ void fl_dot_f32(const float* x, const float* y, u64 n, double* p) { dot_kernel<float>(x, y, n, p); }
extern "C" __global__ void fl_dot_f64(const double* x, const double* y, u64 n, double* p) { dot_kernel<double>(x, y, n, p); }

// out[0] = sum of the m partials, in a fixed order (one block)
extern "C" __global__ void fl_sum_partials(const double* __restrict__ partial, u64 m, double* __restrict__ out) {
    double acc = 0.0;
    for (u64 i = threadIdx.x; i < m; i += FL_BLOCK) acc += partial[i];
    double t = block_sum(acc);
    if (threadIdx.x == 0) out[0] = t;
}

// ---- min / max (NaN propagates) --------------------------------------------------------------------------------
// partial[2*b] = min, partial[2*b+1] = max of block b (NaN when the block saw one)

__device__ __forceinline__ double nan_min(double a, double b) { return (a != a || b != b) ? __longlong_as_double(0x7ff8000000000000LL) : fmin(a, b); }
__device__ __forceinline__ double nan_max(double a, double b) { return (a != a || b != b) ? __longlong_as_double(0x7ff8000000000000LL) : fmax(a, b); }

__device__ void block_minmax(double lo, double hi, double* out) {
    __shared__ double slo[FL_BLOCK], shi[FL_BLOCK];
    __syncthreads();
    slo[threadIdx.x] = lo;
    shi[threadIdx.x] = hi;
    __syncthreads();
    for (int s = FL_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            slo[threadIdx.x] = nan_min(slo[threadIdx.x], slo[threadIdx.x + s]);
            shi[threadIdx.x] = nan_max(shi[threadIdx.x], shi[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { out[0] = slo[0]; out[1] = shi[0]; }
}

template <typename T>
__device__ void minmax_kernel(const T* __restrict__ x, u64 n, double* __restrict__ partial) {
    double lo = __longlong_as_double(0x7ff0000000000000LL), hi = -lo;  // +inf, -inf
    const u64 stride = (u64)gridDim.x * FL_BLOCK;
    for (u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        lo = nan_min(lo, v);
        hi = nan_max(hi, v);
    }
    block_minmax(lo, hi, partial + 2 * (u64)blockIdx.x);
}
extern "C" __global__ void fl_minmax_f32(const float* x, u64 n, double* p) { minmax_kernel<float>(x, n, p); }
extern "C" __global__ void fl_minmax_f64(const double* x, u64 n, double* p) { minmax_kernel<double>(x, n, p); }
extern "C" __global__ void fl_minmax_partials(const double* __restrict__ partial, u64 m, double* __restrict__ out) {
    double lo = __longlong_as_double(0x7ff0000000000000LL), hi = -lo;
    for (u64 i = threadIdx.x; i < m; i += FL_BLOCK) {
        lo = nan_min(lo, partial[2 * i]);
        hi = nan_max(hi, partial[2 * i + 1]);
    }
    block_minmax(lo, hi, out);
}

// ---- argmin / argmax (first occurrence; the first NaN wins) ----------------------------------------------------
// `better(a, ia, b, ib)`: whether candidate a (index ia) beats b (index ib)
template <bool MAX>
__device__ __forceinline__ bool better(double a, i64 ia, double b, i64 ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    bool an = a != a, bn = b != b;
    if (an || bn) return an && (!bn || ia < ib);
    if (a == b) return ia < ib;
    return MAX ? a > b : a < b;
}

template <bool MAX>
__device__ void block_arg(double v, i64 idx, double* outv, i64* outi) {
    __shared__ double sv[FL_BLOCK];
    __shared__ i64 si[FL_BLOCK];
    __syncthreads();
    sv[threadIdx.x] = v;
    si[threadIdx.x] = idx;
    __syncthreads();
    for (int s = FL_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && better<MAX>(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
            sv[threadIdx.x] = sv[threadIdx.x + s];
            si[threadIdx.x] = si[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { *outv = sv[0]; *outi = si[0]; }
}

template <typename T, bool MAX>
__device__ void arg_kernel(const T* __restrict__ x, u64 n, double* __restrict__ pv, i64* __restrict__ pi) {
    double best = 0.0;
    i64 bi = -1;
    const u64 stride = (u64)gridDim.x * FL_BLOCK;
    for (u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        if (better<MAX>(v, (i64)i, best, bi)) { best = v; bi = (i64)i; }
    }
    block_arg<MAX>(best, bi, pv + blockIdx.x, pi + blockIdx.x);
}
template <bool MAX>
__device__ void arg_partials(const double* __restrict__ pv, const i64* __restrict__ pi, u64 m, i64* __restrict__ out) {
    double best = 0.0;
    i64 bi = -1;
    for (u64 i = threadIdx.x; i < m; i += FL_BLOCK)
        if (better<MAX>(pv[i], pi[i], best, bi)) { best = pv[i]; bi = pi[i]; }
    double v;
    block_arg<MAX>(best, bi, &v, out);
}
extern "C" __global__ void fl_argmin_f32(const float* x, u64 n, double* pv, i64* pi) { arg_kernel<float, false>(x, n, pv, pi); }
extern "C" __global__ void fl_argmin_f64(const double* x, u64 n, double* pv, i64* pi) { arg_kernel<double, false>(x, n, pv, pi); }
extern "C" __global__ void fl_argmax_f32(const float* x, u64 n, double* pv, i64* pi) { arg_kernel<float, true>(x, n, pv, pi); }
extern "C" __global__ void fl_argmax_f64(const double* x, u64 n, double* pv, i64* pi) { arg_kernel<double, true>(x, n, pv, pi); }
extern "C" __global__ void fl_argmin_partials(const double* pv, const i64* pi, u64 m, i64* out) { arg_partials<false>(pv, pi, m, out); }
extern "C" __global__ void fl_argmax_partials(const double* pv, const i64* pi, u64 m, i64* out) { arg_partials<true>(pv, pi, m, out); }

// ---- var / std: Welford per thread, Chan's formula across threads and blocks ---------------------------------------
struct Moments { double n, mean, m2; };

__device__ __forceinline__ Moments chan(Moments a, Moments b) {
    if (b.n == 0.0) return a;
    if (a.n == 0.0) return b;
    double n = a.n + b.n, d = b.mean - a.mean;
    Moments r;
    r.n = n;
    r.mean = a.mean + d * (b.n / n);
    r.m2 = a.m2 + b.m2 + d * d * (a.n * b.n / n);
    return r;
}

__device__ void block_moments(Moments t, double* out) {
    __shared__ double sn[FL_BLOCK], smean[FL_BLOCK], sm2[FL_BLOCK];
    __syncthreads();
    sn[threadIdx.x] = t.n;
    smean[threadIdx.x] = t.mean;
    sm2[threadIdx.x] = t.m2;
    __syncthreads();
    for (int s = FL_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            Moments a = {sn[threadIdx.x], smean[threadIdx.x], sm2[threadIdx.x]};
            Moments b = {sn[threadIdx.x + s], smean[threadIdx.x + s], sm2[threadIdx.x + s]};
            Moments r = chan(a, b);
            sn[threadIdx.x] = r.n;
            smean[threadIdx.x] = r.mean;
            sm2[threadIdx.x] = r.m2;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { out[0] = sn[0]; out[1] = smean[0]; out[2] = sm2[0]; }
}

template <typename T>
__device__ void moments_kernel(const T* __restrict__ x, u64 n, double* __restrict__ partial) {
    Moments t = {0.0, 0.0, 0.0};
    const u64 stride = (u64)gridDim.x * FL_BLOCK;
    for (u64 i = (u64)blockIdx.x * FL_BLOCK + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        t.n += 1.0;
        double d = v - t.mean;
        t.mean += d / t.n;
        t.m2 += d * (v - t.mean);
    }
    block_moments(t, partial + 3 * (u64)blockIdx.x);
}
extern "C" __global__ void fl_moments_f32(const float* x, u64 n, double* p) { moments_kernel<float>(x, n, p); }
extern "C" __global__ void fl_moments_f64(const double* x, u64 n, double* p) { moments_kernel<double>(x, n, p); }
// out = (n, mean, m2) of the m partial triplets
extern "C" __global__ void fl_moments_partials(const double* __restrict__ partial, u64 m, double* __restrict__ out) {
    Moments t = {0.0, 0.0, 0.0};
    for (u64 i = threadIdx.x; i < m; i += FL_BLOCK) {
        Moments b = {partial[3 * i], partial[3 * i + 1], partial[3 * i + 2]};
        t = chan(t, b);
    }
    block_moments(t, out);
}

// ---- elementwise (out may alias an input) -----------------------------------------------------------------------
#define FL_ELEMWISE(name, T, params, expr)                                                   \
    extern "C" __global__ void name params {                                                  \
        const u64 stride = (u64)gridDim.x * blockDim.x;                                       \
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {        \
            out[i] = (expr);                                                                  \
        }                                                                                     \
    }

FL_ELEMWISE(fl_axpy_f32, float, (float a, const float* x, const float* y, float* out, u64 n), a * x[i] + y[i])
FL_ELEMWISE(fl_axpy_f64, double, (double a, const double* x, const double* y, double* out, u64 n), a * x[i] + y[i])
FL_ELEMWISE(fl_fma_f32, float, (const float* x, const float* y, const float* z, float* out, u64 n), fmaf(x[i], y[i], z[i]))
FL_ELEMWISE(fl_fma_f64, double, (const double* x, const double* y, const double* z, double* out, u64 n), fma(x[i], y[i], z[i]))
FL_ELEMWISE(fl_scale_f32, float, (float a, const float* x, float* out, u64 n), a * x[i])
FL_ELEMWISE(fl_scale_f64, double, (double a, const double* x, double* out, u64 n), a * x[i])
// standardize: (x - mean) / std with mean and std from the moments (std == 0 gives NaN/inf as NumPy does)
FL_ELEMWISE(fl_standardize_f32, float, (const float* x, double mean, double sd, float* out, u64 n), (float)(((double)x[i] - mean) / sd))
FL_ELEMWISE(fl_standardize_f64, double, (const double* x, double mean, double sd, double* out, u64 n), (x[i] - mean) / sd)

// clip like np.clip: NaN stays NaN; has_lo/has_hi leave a side open
template <typename T>
__device__ __forceinline__ T clip1(T v, T lo, T hi, int has_lo, int has_hi) {
    if (v != v) return v;
    if (has_lo && v < lo) v = lo;
    if (has_hi && v > hi) v = hi;
    return v;
}
FL_ELEMWISE(fl_clip_f32, float, (const float* x, float lo, float hi, int has_lo, int has_hi, float* out, u64 n), clip1<float>(x[i], lo, hi, has_lo, has_hi))
FL_ELEMWISE(fl_clip_f64, double, (const double* x, double lo, double hi, int has_lo, int has_hi, double* out, u64 n), clip1<double>(x[i], lo, hi, has_lo, has_hi))

// ---- Adam / AdamW step in place (PyTorch's single-tensor arithmetic, as the CPU kernel) ------------------------
template <typename T>
__device__ void adam_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, u64 n,
                            T b1w, T b2, T one_b2, T wd, T decay, T neg_step, T bc2s, T eps, int lerp_hi) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T pi = p[i], gi = g[i], mi = m[i], vi = v[i];
        if (wd != (T)0) gi = gi + wd * pi;
        pi = pi * decay;
        mi = lerp_hi ? gi - (gi - mi) * ((T)1 - b1w) : mi + b1w * (gi - mi);
        vi = vi * b2 + one_b2 * gi * gi;
        T denom = sqrt(vi) / bc2s + eps;
        p[i] = pi + neg_step * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}
extern "C" __global__ void fl_adam_f32(float* p, const float* g, float* m, float* v, u64 n, float b1w, float b2, float one_b2,
                                       float wd, float decay, float neg_step, float bc2s, float eps, int lerp_hi) {
    adam_kernel<float>(p, g, m, v, n, b1w, b2, one_b2, wd, decay, neg_step, bc2s, eps, lerp_hi);
}
extern "C" __global__ void fl_adam_f64(double* p, const double* g, double* m, double* v, u64 n, double b1w, double b2,
                                       double one_b2, double wd, double decay, double neg_step, double bc2s, double eps,
                                       int lerp_hi) {
    adam_kernel<double>(p, g, m, v, n, b1w, b2, one_b2, wd, decay, neg_step, bc2s, eps, lerp_hi);
}
