// fp8 (E4M3) weights to bf16, f16 or f32 on a card, one pass, compiled at
// run time by NVRTC (src/models/wan/fp8_cuda.rs). Every E4M3 value is exact
// in all three, so this is bit for bit a correct cast; it replaces candle
// 0.11.1's fp8 cast kernels, which fail to load on a card, and the lookup
// table that stood in for them (an index_select, several passes).
//
// No headers: outputs are written as raw bits.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

// The f32 bits of an E4M3 byte: sign, 4 exponent bits (bias 7), 3 mantissa
// bits; exponent 0 is subnormal (m x 2^-9), S.1111.111 is NaN, no infinity.
__device__ __forceinline__ u32 e4m3_bits(u8 b) {
    const u32 sign = (u32)(b & 0x80) << 24;
    const u32 e = (b >> 3) & 0xf, m = b & 7;
    if (e == 0xf && m == 7)
        return sign | 0x7fc00000u;
    if (e == 0)
        return sign | __float_as_uint((float)m * 0.001953125f);
    return sign | ((e + 120) << 23) | (m << 20);
}

extern "C" __global__ void baton_fp8_to_f32(const u8 *w, u32 *out, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = e4m3_bits(w[i]);
}

// bf16 is the top half of f32; E4M3's 3 mantissa bits fit, so truncation is exact.
extern "C" __global__ void baton_fp8_to_bf16(const u8 *w, u16 *out, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = (u16)(e4m3_bits(w[i]) >> 16);
}

extern "C" __global__ void baton_fp8_to_f16(const u8 *w, u16 *out, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        u16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(__uint_as_float(e4m3_bits(w[i]))));
        out[i] = h;
    }
}
