// Fused attention on a card (flash-attention 2 style), compiled at run time
// by NVRTC (src/models/wan/flash_cuda.rs), so the build needs no nvcc for it.
//
// softmax(q k^T * scale) v for bf16 or f16 inputs, head dim 64 or 128, with
// the softmax and both products accumulated in f32 on the tensor cores
// (mma.sync m16n8k16). No score matrix exists: each warp keeps its 16 query
// rows' running max, running sum and output in registers while key/value
// tiles of 64 pass through shared memory.
//
//   q [B, H, Sq, D], k and v [B, H, Sk, D], contiguous; out [B, Sq, H, D]
//   grid (ceil(Sq / 64), B * H), 128 threads: 4 warps x 16 query rows
//
// No headers: the 16-bit values travel as raw bits, and conversions are PTX.

typedef unsigned short u16;
typedef unsigned int u32;

#define BM 64
#define BN 64
#define WARPS 4

// Two f32 to a packed pair of 16-bit floats: `lo` in the low half (the
// element at the lower address), round to nearest even.
template <bool BF16> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<true>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ u32 pack2<false>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// c += a b for one 16x8x16 tile: a row-major 16x16 (4 registers), b
// column-major 16x8 (2 registers), c 16x8 f32 (4 registers).
template <bool BF16> __device__ __forceinline__ void mma(float *c, const u32 *a, const u32 *b);
template <> __device__ __forceinline__ void mma<true>(float *c, const u32 *a, const u32 *b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma<false>(float *c, const u32 *a, const u32 *b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two adjacent 16-bit values of row `row` at column `col` (even), or zeros
// past the last row.
__device__ __forceinline__ u32 load2(const u16 *base, int row, int rows, int col, int D) {
    return row < rows ? *(const u32 *)(base + (size_t)row * D + col) : 0u;
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// In the fragments below a lane holds rows g and g + 8 of its warp's 16
// and, per 8-column tile, columns 2t and 2t + 1 (g = lane / 4, t = lane % 4).
template <int D, bool BF16>
__device__ __forceinline__ void flash_fwd(const u16 *__restrict__ q, const u16 *__restrict__ k,
                                          const u16 *__restrict__ v, u16 *__restrict__ out,
                                          int H, int Sq, int Sk, float scale_log2) {
    // Padded rows: lane (g, t) reads word 4g + t of a 32-bank window, so a
    // warp's fragment loads hit 32 different banks.
    const int KS = D + 8;
    const int VS = BN + 8;
    __shared__ __align__(16) u16 ks[BN * (D + 8)];
    __shared__ __align__(16) u16 vt[D * (BN + 8)];

    const int bh = blockIdx.y;
    const int b = bh / H, h = bh % H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int row0 = blockIdx.x * BM + warp * 16;
    const u16 *qb = q + (size_t)bh * Sq * D;
    const u16 *kb = k + (size_t)bh * Sk * D;
    const u16 *vb = v + (size_t)bh * Sk * D;

    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int c = kk * 16 + 2 * t;
        qf[kk][0] = load2(qb, row0 + g, Sq, c, D);
        qf[kk][1] = load2(qb, row0 + g + 8, Sq, c, D);
        qf[kk][2] = load2(qb, row0 + g, Sq, c + 8, D);
        qf[kk][3] = load2(qb, row0 + g + 8, Sq, c + 8, D);
    }

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    const float NEG_INF = __int_as_float(0xff800000);
    float m[2] = {NEG_INF, NEG_INF};
    float l[2] = {0.f, 0.f};

    for (int n0 = 0; n0 < Sk; n0 += BN) {
        __syncthreads(); // the previous tile is no longer read
        for (int i = threadIdx.x; i < BN * D / 2; i += WARPS * 32) {
            const int r = i / (D / 2), c = (i % (D / 2)) * 2;
            const u32 kv = load2(kb, n0 + r, Sk, c, D);
            const u32 vv = load2(vb, n0 + r, Sk, c, D);
            *(u32 *)(ks + r * KS + c) = kv;
            vt[c * VS + r] = (u16)(vv & 0xffffu);
            vt[(c + 1) * VS + r] = (u16)(vv >> 16);
        }
        __syncthreads();

        // s = q k^T for this warp's 16 rows and the tile's 64 keys.
        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const u16 *kr = ks + (j * 8 + g) * KS + kk * 16 + 2 * t;
                const u32 bf[2] = {*(const u32 *)kr, *(const u32 *)(kr + 8)};
                mma<BF16>(s[j], qf[kk], bf);
            }
        }

        // Online softmax in base 2, keys past Sk masked out.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = n0 + j * 8 + 2 * t + (e & 1);
                const float x = col < Sk ? s[j][e] * scale_log2 : NEG_INF;
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], mnew[2], rs[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            // Column n0 < Sk is in every tile, so the max is finite.
            mnew[r] = fmaxf(m[r], quad_max(mx[r]));
            alpha[r] = exp2f(m[r] - mnew[r]);
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[j][e] - mnew[e >> 1]);
                s[j][e] = p;
                rs[e >> 1] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            l[r] = l[r] * alpha[r] + quad_sum(rs[r]);
            m[r] = mnew[r];
        }
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }

        // o += p v: two 8-key score tiles are one 16-key A fragment.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const u32 pa[4] = {
                pack2<BF16>(s[2 * kk][0], s[2 * kk][1]),
                pack2<BF16>(s[2 * kk][2], s[2 * kk][3]),
                pack2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                const u16 *vr = vt + (j * 8 + g) * VS + kk * 16 + 2 * t;
                const u32 bf[2] = {*(const u32 *)vr, *(const u32 *)(vr + 8)};
                mma<BF16>(o[j], pa, bf);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
        if (row >= Sq)
            continue;
        const float inv = 1.f / l[r];
        u16 *dst = out + (((size_t)b * Sq + row) * H + h) * D + 2 * t;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
            *(u32 *)(dst + j * 8) = pack2<BF16>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
}

#define ENTRY(NAME, D, BF16)                                                                       \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
        NAME(const u16 *q, const u16 *k, const u16 *v, u16 *out, int H, int Sq, int Sk,          \
             float scale_log2) {                                                                   \
        flash_fwd<D, BF16>(q, k, v, out, H, Sq, Sk, scale_log2);                                   \
    }

ENTRY(baton_flash_bf16_d128, 128, true)
ENTRY(baton_flash_f16_d128, 128, false)
ENTRY(baton_flash_bf16_d64, 64, true)
ENTRY(baton_flash_f16_d64, 64, false)
