// out = x @ w.T for bfloat16 x [M, K] and w [N, K], for CPUs with AVX-512 BF16.
// Two paths: this first one for CPUs where torch sums with vdpbf16ps (AMD Zen 4; Intel without
// AMX), and bf16_linear_amx further down for CPUs where torch uses AMX tiles.
//
// Why it exists: at 8B scale a forward pass is 17 rows against 15 GB of weights. torch's
// matmul (oneDNN) first copies each weight matrix into its own blocked layout, so every
// weight byte is read, written and read again. This kernel reads each weight row where it
// lies in the memory-mapped checkpoint and reorders it in 16 KB pieces that stay in cache.
//
// It adds the products in the same order as oneDNN does on these CPUs, so the result is
// torch's, bit for bit: for each output, runs of `kchunk` inputs (1024, or 512 when M == 1)
// are summed two products at a time by vdpbf16ps into a float32 that starts at zero, the
// runs are added in order, and the sum is rounded once to bfloat16. notebooks/matmul_kernel.py
// measures torch's run length and checks the equality before it uses this kernel at all.
//
// Layout in the inner loop: each 512-bit lane holds one output column (one weight row), so
// one vdpbf16ps adds pair p of 16 weight rows times pair p of one row of x, broadcast.
// Threads: as many as torch's OpenMP runtime is set to use (this library links the libgomp torch loaded),
// but run by a small pool of this library's own (see ChunkPool below).

#include <immintrin.h>
#include <linux/futex.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// The weight rows of one call are cut into chunks, and each thread takes the next chunk not yet taken.
// An OpenMP parallel region would do the same, but it ends on a barrier that waits for every thread of
// the team, also one that has not started yet: on a machine whose cores are shared with other work, a
// helper thread that is waiting for a core then holds up the call for a whole scheduler time slice
// (measured here: 4-8 ms a call, 224 calls per decode step, several seconds per token). Here the calling
// thread takes chunks too and waits only for chunks already taken; a helper that comes late finds none
// left. Helpers spin for a short while after a call (the next one usually follows within microseconds),
// then sleep on a futex.
class ChunkPool {
  public:
    template <class F>
    void run(int n_chunks, F&& f) {
        const int threads = omp_get_max_threads();  // what torch.set_num_threads set
        std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);  // another thread's call in progress: run alone
        if (threads <= 1 || n_chunks <= 1 || !lock.owns_lock()) {
            for (int c = 0; c < n_chunks; c++) f(c);
            return;
        }
        start(threads - 1);
        fn_ = [](void* ctx, int c) { (*static_cast<F*>(ctx))(c); };
        ctx_ = &f;
        n_chunks_ = n_chunks, helpers_allowed_ = threads - 1;
        done_.store(0, std::memory_order_relaxed);
        const uint32_t gen = generation_.load(std::memory_order_relaxed) + 1;
        state_.store((uint64_t)gen << 32, std::memory_order_release);  // chunk 0 of this call is next
        generation_.store(gen, std::memory_order_release);
        if (sleeping_.load(std::memory_order_acquire) > 0)
            syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
        work(gen);
        while (done_.load(std::memory_order_acquire) < n_chunks) _mm_pause();  // only chunks others took
    }

  private:
    void start(int helpers) {
        while ((int)threads_.size() < helpers) {
            const int index = (int)threads_.size();
            threads_.emplace_back([this, index] { loop(index); });
            threads_.back().detach();
        }
    }

    // Takes chunks of call `gen` until none are left; false if the call is over (a newer one began).
    void work(uint32_t gen) {
        uint64_t state = state_.load(std::memory_order_acquire);
        for (;;) {
            if ((uint32_t)(state >> 32) != gen || (int)(uint32_t)state >= n_chunks_) return;
            if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) continue;
            fn_(ctx_, (int)(uint32_t)state);
            done_.fetch_add(1, std::memory_order_release);
            state = state_.load(std::memory_order_acquire);
        }
    }

    void loop(int index) {
        uint32_t seen = generation_.load(std::memory_order_acquire);
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
            uint32_t gen;
            while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
                if (std::chrono::steady_clock::now() < until) {
                    for (int i = 0; i < 16; i++) _mm_pause();
                    continue;
                }
                sleeping_.fetch_add(1, std::memory_order_acq_rel);
                if (generation_.load(std::memory_order_acquire) == seen)
                    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
                sleeping_.fetch_sub(1, std::memory_order_acq_rel);
            }
            seen = gen;
            if (index < helpers_allowed_) work(gen);
        }
    }

    std::atomic<uint32_t> generation_{0};  // one more for each call: what sleeping helpers wait on
    std::atomic<uint64_t> state_{0};       // the call's generation (high half) and its next chunk (low half)
    std::atomic<int> done_{0}, sleeping_{0};
    void (*fn_)(void*, int) = nullptr;
    void* ctx_ = nullptr;
    int n_chunks_ = 0, helpers_allowed_ = 0;
    std::vector<std::thread> threads_;
    std::mutex busy_;
};

ChunkPool& pool() {
    static ChunkPool* p = new ChunkPool;  // never destroyed: its detached threads use it until the process ends
    return *p;
}

}  // namespace

namespace {

constexpr int kTileN = 16;     // weight rows per tile: one zmm lane each
constexpr int kPiece = 256;    // bf16 pairs per reordered piece: 16 rows x 1 KB = 16 KB
constexpr int kMaxRows = 24;   // rows of x per pass: 24 accumulators + 1 weight register
constexpr int kMaxM = 64;

// 16 rows of 16 dwords in r[] -> r[j] holds dword j of every row (a 16x16 transpose).
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

// piece[p] = pair (p0 + p) of each of the 16 rows of w (rows are K2 dwords apart).
void reorder_piece(const uint32_t* w, int K2, int p0, int n_pairs, __m512i* piece) {
    for (int p = 0; p < n_pairs; p += 16) {
        __m512i r[16];
        for (int n = 0; n < 16; n++) r[n] = _mm512_loadu_si512(w + (size_t)n * K2 + p0 + p);
        transpose16(r);
        for (int j = 0; j < 16; j++) piece[p + j] = r[j];
    }
}

// acc[m] += piece[p] * broadcast(x pair p of row m), for p in [0, n_pairs), in order.
// x_pairs is pair-major (x_pairs[p * ld + m]); `ahead`, if set, is the piece after next,
// fetched into L2 one cache line per pair so that memory and arithmetic overlap.
#define DOT(m)                                                                              \
    if constexpr (ROWS > m)                                                                 \
        asm("vdpbf16ps %c[off](%[xp])%{1to16%}, %[w], %[a]"                                 \
            : [a] "+v"(a##m) : [w] "v"(wv), [xp] "r"(xp), [off] "i"(4 * (m)));
#define LOAD(m) __m512 a##m = ROWS > m ? acc[m] : _mm512_setzero_ps();
#define STORE(m) if constexpr (ROWS > m) acc[m] = a##m;
#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) \
                F(12) F(13) F(14) F(15) F(16) F(17) F(18) F(19) F(20) F(21) F(22) F(23)

template <int ROWS>
void dot_piece(const uint32_t* x_pairs, int ld, const __m512i* piece, int n_pairs, __m512* acc,
               const char* ahead, size_t ahead_row_bytes) {
    static_assert(ROWS <= kMaxRows);
    EACH(LOAD)
    for (int p = 0; p < n_pairs; p++) {
        const __m512i wv = piece[p];
        const uint32_t* xp = x_pairs + (size_t)p * ld;
        if (ahead) _mm_prefetch(ahead + (size_t)(p >> 4) * ahead_row_bytes + (p & 15) * 64, _MM_HINT_T1);
        EACH(DOT)
    }
    EACH(STORE)
}

void dot_rows(int rows, const uint32_t* x_pairs, int ld, const __m512i* piece, int n_pairs, __m512* acc,
              const char* ahead, size_t ahead_row_bytes) {
    switch (rows) {
#define CASE(r) case r: dot_piece<r>(x_pairs, ld, piece, n_pairs, acc, ahead, ahead_row_bytes); break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
        CASE(13) CASE(14) CASE(15) CASE(16) CASE(17) CASE(18) CASE(19) CASE(20) CASE(21) CASE(22) CASE(23) CASE(24)
#undef CASE
    }
}

// Output columns [16 * tile_begin, 16 * tile_end) for all M rows.
void tiles(const uint32_t* x_pairs, const uint16_t* w, uint16_t* out, int M, int N, int K, int kchunk,
           int tile_begin, int tile_end) {
    const int K2 = K / 2, run2 = kchunk / 2;
    alignas(64) __m512i piece[kPiece];
    __m512 total[kMaxM], acc[kMaxM];
    for (int t = tile_begin; t < tile_end; t++) {
        const uint32_t* wt = reinterpret_cast<const uint32_t*>(w + (size_t)t * kTileN * K);
        for (int m = 0; m < M; m++) total[m] = _mm512_setzero_ps();
        for (int r0 = 0; r0 < K2; r0 += run2) {
            const int r1 = r0 + run2 < K2 ? r0 + run2 : K2;
            for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
            for (int p0 = r0; p0 < r1; p0 += kPiece) {
                const int n_pairs = r1 - p0 < kPiece ? r1 - p0 : kPiece;
                reorder_piece(wt, K2, p0, n_pairs, piece);
                const char* ahead = nullptr;  // two pieces on: in this tile, or the next one
                if (p0 + 2 * n_pairs < K2)
                    ahead = reinterpret_cast<const char*>(wt + p0 + 2 * n_pairs);
                else if (t + 1 < tile_end)
                    ahead = reinterpret_cast<const char*>(wt + (size_t)kTileN * K2 + (p0 + 2 * n_pairs - K2));
                for (int m0 = 0; m0 < M; m0 += kMaxRows)
                    dot_rows(M - m0 < kMaxRows ? M - m0 : kMaxRows, x_pairs + (size_t)p0 * M + m0, M, piece,
                             n_pairs, acc + m0, m0 == 0 ? ahead : nullptr, (size_t)K2 * 4);
            }
            for (int m = 0; m < M; m++) total[m] = _mm512_add_ps(total[m], acc[m]);  // runs in order
        }
        for (int m = 0; m < M; m++)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (size_t)m * N + (size_t)t * kTileN),
                                (__m256i)_mm512_cvtneps_pbh(total[m]));  // round to nearest even
    }
}

// M == 1, the matrix-vector product of a decode step, where each weight byte is used once and the
// pass must keep up with memory. The general path above is slow at it: its reordered piece goes
// through L1 and back, and one tile's single float32 sum waits on vdpbf16ps's latency at every pair.
// Here each 16 x 16 block of pairs is transposed in registers and used at once, kGroup tiles (64
// weight rows) go side by side so that their sums are independent chains, and each row is fetched
// kAhead cache lines ahead (at the end of a row, the start of the same row of the next group).
// The sums are the same as above: pairs in order from zero within each run, runs added in order.
constexpr int kGroup = 4;
constexpr int kAhead = 8;

template <int G>
void gemv_group(const uint32_t* x32, const uint32_t* w, const uint32_t* next, uint16_t* out, int K2, int run2) {
    __m512 total[G];
    for (int g = 0; g < G; g++) total[g] = _mm512_setzero_ps();
    for (int r0 = 0; r0 < K2; r0 += run2) {
        const int r1 = r0 + run2 < K2 ? r0 + run2 : K2;  // run2 and K2 are multiples of 16
        __m512 acc[G];
        for (int g = 0; g < G; g++) acc[g] = _mm512_setzero_ps();
        for (int p0 = r0; p0 < r1; p0 += 16) {
            const int q = p0 + 16 * kAhead;
            for (int g = 0; g < G; g++) {
                const uint32_t* rows = w + (size_t)g * kTileN * K2;
                const uint32_t* ahead = q < K2 ? rows + q : next ? next + (size_t)g * kTileN * K2 + (q - K2) : nullptr;
                __m512i r[16];
                for (int n = 0; n < 16; n++) {
                    if (ahead) _mm_prefetch(reinterpret_cast<const char*>(ahead + (size_t)n * K2), _MM_HINT_T0);
                    r[n] = _mm512_loadu_si512(rows + (size_t)n * K2 + p0);
                }
                transpose16(r);
                for (int j = 0; j < 16; j++)
                    acc[g] = _mm512_dpbf16_ps(acc[g], (__m512bh)r[j], (__m512bh)_mm512_set1_epi32((int)x32[p0 + j]));
            }
        }
        for (int g = 0; g < G; g++) total[g] = _mm512_add_ps(total[g], acc[g]);  // runs in order
    }
    for (int g = 0; g < G; g++)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (size_t)g * kTileN), (__m256i)_mm512_cvtneps_pbh(total[g]));
}

// Tiles [tile_begin, tile_end) of out = w @ x for one row x, kGroup tiles at a time.
void gemv_tiles(const uint32_t* x32, const uint16_t* w, uint16_t* out, int K, int kchunk, int tile_begin, int tile_end) {
    const int K2 = K / 2, run2 = kchunk / 2;
    const uint32_t* w32 = reinterpret_cast<const uint32_t*>(w);
    for (int t = tile_begin; t < tile_end; t += kGroup) {
        const uint32_t* rows = w32 + (size_t)t * kTileN * K2;
        const uint32_t* next = t + kGroup < tile_end ? rows + (size_t)kGroup * kTileN * K2 : nullptr;
        uint16_t* o = out + (size_t)t * kTileN;
        switch (tile_end - t < kGroup ? tile_end - t : kGroup) {
            case 1: gemv_group<1>(x32, rows, next, o, K2, run2); break;
            case 2: gemv_group<2>(x32, rows, next, o, K2, run2); break;
            case 3: gemv_group<3>(x32, rows, next, o, K2, run2); break;
            default: gemv_group<kGroup>(x32, rows, next, o, K2, run2); break;
        }
    }
}

// Threads take the weight rows in chunks of kChunkTiles tiles (256 rows), each the next one not yet
// taken (ChunkPool), rather than half each: on a machine shared with other work, a thread that gets less
// of its core then does less of the matrix instead of holding up the other one.
constexpr int kChunkTiles = 16;
inline int chunks(int n_tiles) { return (n_tiles + kChunkTiles - 1) / kChunkTiles; }
inline int chunk_end(int c, int n_tiles) { return (c + 1) * kChunkTiles < n_tiles ? (c + 1) * kChunkTiles : n_tiles; }

// The x buffer of the calling thread, kept between calls (a decode step makes 224 of them).
uint32_t* x_buffer(size_t dwords) {
    thread_local uint32_t* buffer = nullptr;
    thread_local size_t capacity = 0;
    if (capacity < dwords) {
        free(buffer);
        buffer = static_cast<uint32_t*>(aligned_alloc(64, (dwords * 4 + 63) / 64 * 64));
        capacity = buffer ? dwords : 0;
    }
    return buffer;
}

}  // namespace

extern "C" {

int bf16_linear_supported(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

// Returns 0, or -1 when the shapes are outside what the kernel handles (the caller uses torch).
int bf16_linear(const uint16_t* x, const uint16_t* w, uint16_t* out, int M, int N, int K, int kchunk) {
    if (M < 1 || M > kMaxM || N % kTileN || K % 32 || kchunk < 32 || kchunk % 32) return -1;
    const int K2 = K / 2, n_tiles = N / kTileN;
    const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
    if (M == 1) {  // x's pairs as they lie; each thread a contiguous range of weight rows
        pool().run(chunks(n_tiles), [&](int c) { gemv_tiles(x32, w, out, K, kchunk, c * kChunkTiles, chunk_end(c, n_tiles)); });
        return 0;
    }
    // x as pairs, pair-major, so that one pass reads the M pairs it broadcasts side by side.
    uint32_t* const x_pairs = x_buffer((size_t)K2 * M);  // the caller's, shared by the threads below
    if (!x_pairs) return -1;
    for (int m = 0; m < M; m++)
        for (int p = 0; p < K2; p++) x_pairs[(size_t)p * M + m] = x32[(size_t)m * K2 + p];
    pool().run(chunks(n_tiles), [&](int c) { tiles(x_pairs, w, out, M, N, K, kchunk, c * kChunkTiles, chunk_end(c, n_tiles)); });
    return 0;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------
// The same product on CPUs with AMX (Intel Xeon 4th generation and later), where torch (oneDNN)
// does its bfloat16 matmuls with AMX tiles: each tdpbf16ps adds 32 products per output to a float32
// accumulator tile, in an order and with a rounding inside the instruction that plain AVX-512
// cannot reproduce. So this path uses the same instruction, with the roles swapped: out^T = w @ x^T.
// A tile is then 16 weight rows x 32 inputs, loaded straight from the weight matrix (its rows are
// contiguous: no reordering at all), and B holds x in the pair-interleaved layout AMX expects.
// Every output still gets the same products added in the same groups of 32, in order, so the result
// is torch's, which notebooks/matmul_kernel.py checks before using it.

namespace {

struct alignas(64) TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

constexpr int kAmxStep = 32;  // inputs per tdpbf16ps

// Tiles: 0..1 weight rows (A), 2..3 two blocks of x rows (B: 16 pairs x `cols` rows each), 4 + 2 * r + b
// the outputs (C: 16 weight rows x `cols` x rows). A block holds up to 16 rows of x, and its tiles are
// only as wide as the rows it holds: for one row (a decode step) B is x itself, 4 bytes per pair, with
// nothing to copy or convert; the outputs of each row are the same as in a full-width tile.
template <int R, int B>
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16"))) void amx_tiles(
    const uint32_t* xb0, const uint32_t* xb1, int cols0, int cols1, const uint16_t* w, uint16_t* out, int m0, int N,
    int K, int kblock, int tile0) {
    const size_t stride = (size_t)K * 2;
    const char* a = reinterpret_cast<const char*>(w + (size_t)tile0 * 16 * K);
    const int steps = K / kAmxStep, block_steps = kblock / kAmxStep;
    const int colsb0 = 4 * cols0, colsb1 = 4 * cols1;
    alignas(64) float c[4][256], partial[4][256];  // [tile][weight row * cols + x row]
    for (int s0 = 0; s0 < steps; s0 += block_steps) {  // each block of kblock inputs from zero
        const int s1 = s0 + block_steps < steps ? s0 + block_steps : steps;
        _tile_zero(4);
        if constexpr (B > 1) _tile_zero(5);
        if constexpr (R > 1) _tile_zero(6);
        if constexpr (R > 1 && B > 1) _tile_zero(7);
        for (int s = s0; s < s1; s++) {
            // No software prefetch: the hardware's alone streamed faster here (0.60 s per decode step
            // against 0.65 s fetching 8 steps ahead and 0.69 s fetching 16 ahead).
            _tile_loadd(0, a + s * 64, stride);
            if constexpr (R > 1) _tile_loadd(1, a + 16 * stride + s * 64, stride);
            _tile_loadd(2, xb0 + s * 16 * cols0, colsb0);
            if constexpr (B > 1) _tile_loadd(3, xb1 + s * 16 * cols1, colsb1);
            _tile_dpbf16ps(4, 0, 2);
            if constexpr (B > 1) _tile_dpbf16ps(5, 0, 3);
            if constexpr (R > 1) _tile_dpbf16ps(6, 1, 2);
            if constexpr (R > 1 && B > 1) _tile_dpbf16ps(7, 1, 3);
        }
        float(*dest)[256] = s0 == 0 ? c : partial;
        _tile_stored(4, dest[0], colsb0);
        if constexpr (B > 1) _tile_stored(5, dest[1], colsb1);
        if constexpr (R > 1) _tile_stored(6, dest[2], colsb0);
        if constexpr (R > 1 && B > 1) _tile_stored(7, dest[3], colsb1);
        if (s0 > 0)  // the blocks' sums added in order, in float32
            for (int t = 0; t < 4; t++)
                for (int i = 0; i < 256; i += 16)
                    _mm512_store_ps(c[t] + i, _mm512_add_ps(_mm512_load_ps(c[t] + i), _mm512_load_ps(partial[t] + i)));
    }
    for (int r = 0; r < R; r++)
        for (int b = 0; b < B; b++) {
            const int cols = b ? cols1 : cols0;
            for (int n = 0; n < cols; n++) {
                alignas(64) float column[16];
                for (int m = 0; m < 16; m++) column[m] = c[2 * r + b][m * cols + n];
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (size_t)(m0 + 16 * b + n) * N + (tile0 + r) * 16),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(column)));  // round to nearest even
            }
        }
}

// Chunk c of the weight rows: pairs of weight tiles (kChunkTiles is even); an odd last tile alone. Each chunk
// sets up the tiles of the thread that takes it, and releases them after.
template <int B>
__attribute__((target("amx-tile,amx-bf16"))) void amx_chunk(int c, const uint32_t* xb0, const uint32_t* xb1, int cols0,
                                                           int cols1, const uint16_t* w, uint16_t* out, int m0, int N,
                                                           int K, int kblock) {
    TileConfig config = {};
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.rows[t] = 16;
    config.colsb[0] = config.colsb[1] = 64;                           // weight rows: 32 inputs each
    config.colsb[2] = config.colsb[4] = config.colsb[6] = 4 * cols0;  // x block 0 and its outputs
    config.colsb[3] = config.colsb[5] = config.colsb[7] = 4 * (B > 1 ? cols1 : cols0);
    _tile_loadconfig(&config);
    const int n_tiles = N / 16, begin = c * kChunkTiles, end = chunk_end(c, n_tiles);
    for (int t = begin; t + 1 < end; t += 2) amx_tiles<2, B>(xb0, xb1, cols0, cols1, w, out, m0, N, K, kblock, t);
    if ((end - begin) % 2) amx_tiles<1, B>(xb0, xb1, cols0, cols1, w, out, m0, N, K, kblock, end - 1);
    _tile_release();
}

}  // namespace

extern "C" {

// AMX needs the kernel's permission once per process (Linux 5.16+: arch_prctl ARCH_REQ_XCOMP_PERM).
int bf16_amx_supported(void) {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512bf16"))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

// kblock: inputs per partial sum (a multiple of 32; K or more for one sum per output), as torch splits K.
int bf16_linear_amx(const uint16_t* x, const uint16_t* w, uint16_t* out, int M, int N, int K, int kblock) {
    if (M < 1 || M > kMaxM || N % 16 || K % kAmxStep || kblock < kAmxStep || kblock % kAmxStep) return -1;
    const size_t K2 = K / 2;
    const uint32_t* x32 = reinterpret_cast<const uint32_t*>(x);
    // x in AMX's B layout, 32 rows (two blocks of up to 16) at a time: each block pair-major,
    // xb[pair][row in block]. One row is that layout already.
    uint32_t* const xb = M > 1 ? x_buffer(K2 * 32) : nullptr;  // the caller's, shared by the threads below
    if (M > 1 && !xb) return -1;
    for (int m0 = 0; m0 < M; m0 += 32) {
        const int cols0 = M - m0 < 16 ? M - m0 : 16, cols1 = M - m0 - 16 < 16 ? M - m0 - 16 : 16;
        const uint32_t *xb0 = x32, *xb1 = nullptr;
        if (M > 1) {
            for (int b = 0; b < (cols1 > 0 ? 2 : 1); b++) {
                const int cols = b ? cols1 : cols0;
                uint32_t* block = xb + b * K2 * 16;
                for (size_t p = 0; p < K2; p++)
                    for (int n = 0; n < cols; n++) block[p * cols + n] = x32[(size_t)(m0 + 16 * b + n) * K2 + p];
            }
            xb0 = xb, xb1 = xb + K2 * 16;
        }
        pool().run(chunks(N / 16), [&](int c) {
            if (cols1 > 0)
                amx_chunk<2>(c, xb0, xb1, cols0, cols1, w, out, m0, N, K, kblock);
            else
                amx_chunk<1>(c, xb0, xb1, cols0, cols1, w, out, m0, N, K, kblock);
        });
    }
    return 0;
}

}  // extern "C"

extern "C" {

// Reads n bytes (a multiple of 64, 64-byte aligned) on all threads and returns their xor, 64 bits
// at a time, so that no load can be skipped: the benchmark's measure of the memory bandwidth.
__attribute__((target("avx512f"))) uint64_t read_all(const void* data, size_t n) {
    const __m512i* v = static_cast<const __m512i*>(data);
    const long count = (long)(n / 64);
    uint64_t result = 0;
#pragma omp parallel reduction(^ : result)
    {
        __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
#pragma omp for schedule(static)
        for (long i = 0; i < count / 4; i++) {  // four independent chains keep the loads in flight
            a = _mm512_xor_si512(a, _mm512_load_si512(v + 4 * i));
            b = _mm512_xor_si512(b, _mm512_load_si512(v + 4 * i + 1));
            c = _mm512_xor_si512(c, _mm512_load_si512(v + 4 * i + 2));
            d = _mm512_xor_si512(d, _mm512_load_si512(v + 4 * i + 3));
        }
        alignas(64) uint64_t lanes[8];
        _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d)));
        for (int j = 0; j < 8; j++) result ^= lanes[j];
    }
    for (long i = count / 4 * 4; i < count; i++) {
        alignas(64) uint64_t lanes[8];
        _mm512_store_si512(lanes, _mm512_load_si512(v + i));
        for (int j = 0; j < 8; j++) result ^= lanes[j];
    }
    return result;
}

}  // extern "C"
